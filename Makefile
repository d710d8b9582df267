# Encore: every target does its own set-up on a fresh machine.
#   make demo   stack up + one worker + a minute of simulated listeners + summary
#   make test   the test suite (starts its own broker / Redis on free loopback ports)
#   make up / make down   local stack + one worker in the background / stop what up started

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_SECONDS ?= 60
DEMO_FLAGS ?=

.PHONY: install system-deps up down status demo test test-unit test-integration test-e2e test-faults lint schemas \
        clean bench \
        bench-karma bench-clickhouse bench-experiments bench-recommenders bench-bandits bench-ceiling bench-throughput \
        bench-offline-1m

install: $(STAMP) system-deps

# torch first, pinned, so pip takes the CPU wheel on disk instead of a multi-GB CUDA build
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

# Debian packages: redis-server (local stack), chromium + its driver (dashboard browser test),
# prometheus + promtool (alert rules check, scrape test)
APT_NEEDS := $(if $(shell command -v redis-server),,redis-server) $(if $(shell command -v chromium),,chromium) \
             $(if $(shell command -v chromedriver),,chromium-driver) $(if $(shell command -v promtool),,prometheus)

system-deps:
	@if [ -n "$(strip $(APT_NEEDS))" ]; then echo "installing with apt: $(APT_NEEDS)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_NEEDS) >/dev/null; fi

up: install
	$(PY) -m deploy.local up

down:
	@test -x $(PY) && $(PY) -m deploy.local down || echo "nothing to stop"

status: install
	$(PY) -m deploy.local status

demo: up
	$(VENV)/bin/encore demo --seconds $(DEMO_SECONDS) $(DEMO_FLAGS)

test: install
	$(PY) -m schemas.avro --check
	ENCORE_FAULT_QUICK=1 $(PY) -m pytest -q -p no:cacheprovider

# the tiers, each runnable alone: pure code (seconds), real services, real worker processes
test-unit: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not integration and not e2e"

test-integration: install
	$(PY) -m pytest -q -p no:cacheprovider -m "integration and not e2e"

test-e2e: install
	$(PY) -m pytest -q -p no:cacheprovider -m e2e --ignore=tests/faults

# fault injection with real processes, full size (kill -9 x10, Redis / ClickHouse outages, partitions
# moving, 100k hostile records, a 10-minute soak): about an hour. `make test` runs most cases small (docs/operations.md, Fault tests).
test-faults: install
	$(PY) -m pytest -q -p no:cacheprovider -s tests/faults

# one worker's drain rate, a bare Faust agent on the same records, slate latency under open-loop
# load, two workers, memory per listener: figures + plot in bench/out/throughput.*  (~10 min)
bench-throughput: install
	$(PY) -m bench.throughput

bench: bench-karma bench-clickhouse bench-experiments bench-recommenders bench-bandits

# closed-loop simulator, 100k events per policy: regret curves in bench/out/closed_loop.png
bench-recommenders: install
	$(PY) -m bench.closed_loop
	$(PY) -m bench.embeddings_effect
	$(PY) -m bench.offline_models
	$(PY) -m bench.ope_check
	$(PY) -m bench.taste_shift
	$(PY) -m bench.mood_check
	$(PY) -m bench.challenges
	$(PY) -m bench.lists
	$(PY) -m bench.engagement
	$(PY) -m bench.offline_models --simulator --neural

# what share of the oracle is reachable: learners told part of the simulator's truth, by
# every offline model, LightGCN and Mult-VAE included, on 1M generated rows (goal: <= 15 min)
bench-offline-1m: install
	$(PY) -m bench.offline_models --rows 1000000 --users 20000 --items 60000 --neural

# listeners (events per listener), 3 seeds; ~15 min; plot in bench/out/ceiling.png
bench-ceiling: install
	$(PY) -m bench.ceiling --listeners 30,100,300 --seeds 7,8,9

# linear bandits' score + update rate vs river LinUCBDisjoint and vowpalwabbit --cb_explore_adf
bench-bandits: install
	$(PY) -m bench.bandit_throughput

bench-clickhouse: install
	$(PY) -m bench.clickhouse_bench

# A/A false-positive rates of every experiment test (and peeking, and an injected SRM)
bench-experiments: install
	$(PY) -m bench.experiments_aa --sims 5000

bench-karma: install
	$(PY) -m bench.karma_bench

lint: install
	$(VENV)/bin/ruff check .

schemas: install
	$(PY) -m schemas.avro

clean: down
	rm -rf var
