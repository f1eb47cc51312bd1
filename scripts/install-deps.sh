#!/usr/bin/env bash
# Installs the system packages KalamDB needs to build (idempotent, non-interactive).
# RocksDB's bindings are generated with bindgen, which needs libclang.
set -euo pipefail

need=()
for pkg in clang libclang-dev pkg-config build-essential; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs) and re-run." >&2
  exit 1
fi
