# Multi-stage, slim, non-root image that runs every lbprovider subcommand
# (serve, controller, agent — with Debian's haproxy — lab, db upgrade, token create).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lbprovider ./lbprovider
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy iproute2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin lbprovider
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY migrations ./migrations
COPY web ./web
ENV LBP_MIGRATIONS_DIR=/app/migrations LBP_WEB_DIR=/app/web PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
ENTRYPOINT ["lbprovider"]
CMD ["serve"]
