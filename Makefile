# The two commands a newcomer needs: `make run` and `make test` (both set up first).
.PHONY: setup run test lint bench deb

setup:
	@bash packaging/setup-host.sh

run: setup
	.venv/bin/sysdream run

test: setup
	.venv/bin/pytest

lint: setup
	.venv/bin/ruff check .

deb: setup
	bash packaging/deb/build.sh
