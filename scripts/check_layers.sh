#!/usr/bin/env bash
# Check the import contracts in .importlinter against the installed layout of osp.
# export/, kernels/ and cli/ hold osp.export, osp.kernels and osp.cli (see pyproject), so the check runs on the
# files of a built wheel (where they sit inside osp/), not on the source tree.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip wheel --quiet --no-deps --no-build-isolation "$repo" -w "$tmp/wheel" >/dev/null
python -m zipfile -e "$tmp"/wheel/*.whl "$tmp/site"
cd "$tmp/site"
PYTHONPATH="$tmp/site" lint-imports --no-cache "$repo/.importlinter"
