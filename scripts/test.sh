#!/bin/sh
# Set up this machine (scripts/setup.sh) and run the whole test suite, as root;
# the rootless cases run as the unprivileged user that setup.sh creates.
set -eu
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --locked --all-targets
# setup.sh opened the repo to the test user; the build just made target/ anew.
chmod -R o+rX target 2>/dev/null || true
cargo test --locked --tests -- --test-threads=2
