#!/usr/bin/env bash
# Start Debian's PostgreSQL cluster 15/main (installing postgresql when missing) and create the
# test role and database. Prints the SQLAlchemy URL on stdout. Idempotent.
set -euo pipefail
DB=${LBP_TEST_PG_DB:-lbprovider_test}
ROLE=${LBP_TEST_PG_ROLE:-lbprovider}
PASS=${LBP_TEST_PG_PASSWORD:-lbprovider}
if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ ! -d /etc/postgresql ]; then
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
VER=$(ls /etc/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" && $4=="online"' | grep -q .; then
  pg_ctlcluster --skip-systemctl-redirect "$VER" main start >&2
fi
for _ in $(seq 1 50); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.2
done
su postgres -c "psql -qAt" >/dev/null <<SQL
SET client_min_messages = warning;
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN PASSWORD '$PASS' CREATEDB;
  END IF;
END\$\$;
-- DROP DATABASE ... WITH (FORCE) terminates every other session on that database, including an
-- autovacuum worker, which belongs to no role: without pg_signal_backend the drop then fails with
-- "must be a member of the role whose process is being terminated" (seen in CI after a migration
-- test). Granted on every run so a role made by an older script gets it too.
GRANT pg_signal_backend TO $ROLE;
SQL
if ! su postgres -c "psql -qAtc \"select 1 from pg_database where datname='$DB'\"" | grep -q 1; then
  su postgres -c "createdb -O $ROLE $DB"
fi
PORT=$(pg_lsclusters -h | awk -v v="$VER" '$1==v && $2=="main" {print $3}')
echo "postgresql+psycopg://$ROLE:$PASS@127.0.0.1:$PORT/$DB"
