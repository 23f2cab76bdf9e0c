#!/usr/bin/env bash
# Refresh constraints.txt: install the newest versions pyproject's ranges allow into a scratch virtual
# environment, run the whole test suite there, and only when it passes rewrite constraints.txt with
# exactly what was installed. On failure constraints.txt is left as it was and the log says why.
#
#   scripts/refresh_constraints.sh [--keep]     # --keep leaves the scratch venv for a look afterwards
#
# torch stays at the version constraints.txt pins (a fresh machine installs it first, from the README's
# `pip install torch==...`): moving to a new torch is a deliberate change, made by editing that pin.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
keep=0
[ "${1:-}" = "--keep" ] && keep=1
torch_pin=${TORCH_PIN:-$(grep -E "^torch==" constraints.txt)}
scratch=$(mktemp -d)
log="$scratch/refresh.log"
cleanup() { [ "$keep" = 1 ] && echo "scratch venv kept in $scratch" || rm -rf "$scratch"; }
trap cleanup EXIT

echo "scratch venv: $scratch/venv (log: $log)"
python3 -m venv "$scratch/venv"
# shellcheck disable=SC1091
. "$scratch/venv/bin/activate"
pip install --quiet --upgrade pip
pip install --quiet "$torch_pin"
echo "$torch_pin" > "$scratch/torch.txt"  # everything else moves to its newest allowed version; torch stays
pip install --quiet -c "$scratch/torch.txt" --upgrade --upgrade-strategy eager -e ".[dev,train]"
pip freeze --exclude-editable > "$scratch/freeze.txt"
echo "newest set: $(wc -l < "$scratch/freeze.txt") packages; running the test suite"
if ! python -m pytest -q -p no:cacheprovider --durations=40 > "$log" 2>&1; then
    tail -n 30 "$log"
    echo "the suite failed with the newest versions: constraints.txt unchanged"
    keep=1
    exit 1
fi
tail -n 1 "$log"
{
    echo "# Every package version the test suite passed with (scripts/refresh_constraints.sh, $(date -u +%F),"
    echo "# Python $(python -c 'import platform; print(platform.python_version())'), $(uname -m)). Used by both README commands and .ci/run:"
    echo "#   pip install -c constraints.txt ..."
    echo "# pyproject.toml keeps ranges for installs into other environments."
    grep -v -E '^(pip|setuptools|wheel)==' "$scratch/freeze.txt"
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt rewritten; review with: git diff constraints.txt"
