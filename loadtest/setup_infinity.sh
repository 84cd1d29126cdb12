#!/usr/bin/env bash
# Build .venv-infinity: the infinity-emb peer in its own virtual environment, as in
# ../shared/PEERS.md (torch==2.13.0 first, then infinity-emb[server,torch,optimum]==0.0.78;
# never the [all] extra, which swaps torch for a multi-GB CUDA build). sentence-transformers
# comes with it and serves the offline CrossEncoder.predict row of the benchmark.
#
# Usage: bash loadtest/setup_infinity.sh [VENV_DIR]   (default .venv-infinity)
# On failure it prints the failing step and pip's last lines, and exits non-zero;
# `python -m loadtest.bench` reports that reason in its output.
set -euo pipefail

VENV="${1:-.venv-infinity}"
PYTHON="${PYTHON:-python3}"
LOG="$(mktemp -t setup-infinity.XXXXXX.log)"

fail() {
  echo "setup_infinity: FAILED at step: $1" >&2
  echo "setup_infinity: last lines of the pip log ($LOG):" >&2
  tail -n 25 "$LOG" >&2 || true
  exit 1
}

if [ -x "$VENV/bin/infinity_emb" ] && "$VENV/bin/python" -c \
  "import infinity_emb, sentence_transformers" >/dev/null 2>&1; then
  echo "setup_infinity: $VENV already has infinity-emb; nothing to do"
  exit 0
fi

"$PYTHON" -m venv "$VENV" >>"$LOG" 2>&1 || fail "create venv with $PYTHON"
# Keep the venv out of git without touching the project's .gitignore.
echo '*' >"$VENV/.gitignore"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip >>"$LOG" 2>&1 || fail "upgrade pip"
"${PIP[@]}" "torch==2.13.0" >>"$LOG" 2>&1 || fail "pip install torch==2.13.0"
"${PIP[@]}" "infinity-emb[server,torch,optimum]==0.0.78" >>"$LOG" 2>&1 ||
  fail "pip install infinity-emb[server,torch,optimum]==0.0.78"
"$VENV/bin/python" -m pip check >>"$LOG" 2>&1 || fail "pip check (conflicting versions)"
"$VENV/bin/python" -c "import infinity_emb, sentence_transformers, torch
print('setup_infinity: infinity-emb', infinity_emb.__version__,
      'sentence-transformers', sentence_transformers.__version__, 'torch', torch.__version__)" \
  2>>"$LOG" || fail "import infinity_emb / sentence_transformers"
rm -f "$LOG"
