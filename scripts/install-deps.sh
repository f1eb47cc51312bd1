#!/usr/bin/env bash
# Installs the system packages KalamDB needs to build (idempotent, non-interactive).
# RocksDB's bindings are generated with bindgen, which needs libclang.
set -euo pipefail

need=()
for pkg in clang libclang-dev pkg-config build-essential curl ca-certificates python3 python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

# Rust itself, through rustup, when the machine has none.
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
  export PATH="$HOME/.cargo/bin:$PATH"
  echo "Rust installed in ~/.cargo/bin; add it to PATH (source ~/.cargo/env) in new shells." >&2
fi

# rustfmt runs in the test suite; minimal toolchains lack it.
if command -v rustup >/dev/null 2>&1 && ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi
