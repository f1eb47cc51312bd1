#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, a build of every binary, then
# every test (unit, in-process HTTP, and end-to-end tests that start the real daemons through
# kalam-supervisor on free ports in temporary directories).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

# One target directory outside the clone, reused across runs and clones (RocksDB's C++ build
# dominates a cold build). A brand-new machine simply starts cold.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kalamdb-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

started=$(date +%s)
cargo fmt --all -- --check
cargo build --workspace --locked --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
echo "test suite passed in $(( $(date +%s) - started ))s"
