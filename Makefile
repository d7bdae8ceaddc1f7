# The two commands a newcomer runs: `make demo` (main job) and `make test`.
# Both set up the pip-mode workspace first (tools/make_env.sh, idempotent).
SHELL := /bin/bash
PYTEST_ARGS ?=
DEMO_ARGS ?= --force

.PHONY: env test demo bench clean

env:
	@bash tools/make_env.sh

test: env
	@source setup.bash && OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} python -m pytest $(PYTEST_ARGS)

demo: env
	@source setup.bash && mmdistill demo $(DEMO_ARGS)

bench: env
	@source setup.bash && for b in benchmarks/bench_*.py; do echo "== $$b"; python $$b || exit 1; done

clean:
	rm -rf build install log setup.bash .venv
