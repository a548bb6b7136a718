#!/bin/sh
# Set up this machine (scripts/setup.sh), build nixcell, and run the demo script
# examples/report.py in a cell made of the bundled offline environment
# (python3 with pandas and openpyxl, and busybox), with no network inside.
set -eu
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --locked
env=$(scripts/build-fixture-env.sh demo)
work=$(mktemp -d "${TMPDIR:-/tmp}/nixcell-demo.XXXXXX")
cp examples/report.py "$work/"
echo "[demo] environment: $env"
echo "[demo] workdir:     $work (mounted at /work)"
echo "[demo] \$ nixcell run --env-path $env --workdir $work -- python3 report.py"
./target/release/nixcell run --env-path "$env" --workdir "$work" -- python3 report.py
echo "[demo] the cell wrote: $(ls "$work")"
