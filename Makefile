# Two commands a newcomer needs (README): `make run` and `make test`. Both do their own setup.
.PHONY: run test setup lint bench clean

run: setup
	.venv/bin/lbprovider lab

test:
	bash scripts/test.sh

setup:
	bash scripts/setup.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

bench: setup
	.venv/bin/python bench/ipam.py
	.venv/bin/python bench/api.py
	.venv/bin/python bench/controller.py
	.venv/bin/python bench/fleet.py
	.venv/bin/python bench/ui.py

clean:
	rm -rf .venv artifacts .pytest_cache .mypy_cache .ruff_cache lbprovider.db
