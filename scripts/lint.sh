#!/usr/bin/env bash
# Formatting and clippy with warnings as errors (the lints are set in the root Cargo.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kalamdb-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
