#!/usr/bin/env bash
# Installs what is needed, builds KalamDB (release) and starts it in the foreground:
# kalam-supervisor with kalamd, kalam-flushd and kalam-lived, data in ./data, serving
# 127.0.0.1:8080. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kalamdb-target}"
cargo build --release --locked --bins
exec "$CARGO_TARGET_DIR/release/kalam-supervisor" --data-dir ./data "$@"
