# The two commands a newcomer needs: `make run` and `make test` (both set up first).
.PHONY: setup run test fuzz lint bench deb

setup:
	@bash packaging/setup-host.sh

run: setup
	.venv/bin/sysdream run

test: setup
	.venv/bin/pytest

# The fuzzers alone, longer: FUZZ_EXAMPLES inputs each (make test runs 150).
FUZZ_EXAMPLES ?= 5000
fuzz: setup
	SYSDREAM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) .venv/bin/pytest -q -k "any or fuzz" \
	    tests/probes/test_fuzz_readers.py tests/daemon/test_fuzz_inputs.py \
	    tests/daemon/test_fleet.py

lint: setup
	.venv/bin/ruff check .

deb: setup
	bash packaging/deb/build.sh
