#!/usr/bin/env bash
# The distribution as a user gets it: build the wheel, install it in a fresh virtual environment, and
# run the CLI and a tiny training from a directory outside the checkout (config comes from the wheel).
# Usage: scripts/wheel-smoke.sh [venv-dir]   (default /tmp/wheel-venv; reused when it already exists)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-/tmp/wheel-venv}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip wheel -q --no-deps -w "$work/dist" "$repo"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q torch==2.13.0   # the CPU build, before the wheel's dependencies
wheel="$(ls "$work"/dist/*.whl)"
"$py" -m pip install -q "$wheel"
"$py" -m pip install -q --force-reinstall --no-deps "$wheel"   # a reused venv gets this build
# The test plugin, as a third-party plugin outside the checkout.
cp -r "$repo/tests/plugin_fixture" "$work/plugin_fixture"

cd "$work"
"$py" -c "import framework, sys; sys.exit(0 if '$repo' not in framework.__file__ else 'imported from the checkout')"
"$py" -m framework list
"$py" -m framework task=music info > /dev/null     # each plugin's conf package composes from the wheel
"$py" -m framework task=gasleak info > /dev/null
PYTHONPATH="$work/plugin_fixture" "$py" -m framework list | grep "tiny:" > /dev/null  # not -q: the CLI would write to a closed pipe
PYTHONPATH="$work/plugin_fixture" "$py" -m framework task=tiny info > /dev/null
PYTHONPATH="$work/plugin_fixture" "$py" -m framework task=tiny train trainer.max_epochs=1 \
    trainer.enable_progress_bar=false paths.outputs="$work/outputs" | tail -1 | grep -q '"global_step"'
ls "$work"/outputs/tiny/train/*/checkpoints/*.ckpt > /dev/null
echo "wheel smoke: ok ($(basename "$work"/dist/*.whl))"
