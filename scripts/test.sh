#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: formatting, a build of every binary, then
# every test (unit, in-process HTTP, and end-to-end tests that start the real daemons through
# kalam-supervisor on free ports in temporary directories).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# Test-only tools: systemd-analyze (unit checks) and systemd-socket-activate (separate-unit test).
if ! command -v systemd-analyze >/dev/null 2>&1 || ! command -v systemd-socket-activate >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd
fi
# The TypeScript SDK's tests: Node.js (20 or newer, with npm) and Debian's Chromium.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1 || [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  pkgs=(chromium)
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}"
fi
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

# One target directory outside the clone, reused across runs and clones (RocksDB's C++ build
# dominates a cold build). A brand-new machine simply starts cold.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kalamdb-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# S3 storages are tested against moto's S3 server (PyPI), installed once into its own venv.
MOTO_VENV="${KALAMDB_MOTO_VENV:-/var/tmp/kalamdb-moto}"
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5"
fi
export KALAMDB_MOTO_SERVER="$MOTO_VENV/bin/moto_server"

# kalam-link must also build for browsers and Node (wasm32-unknown-unknown).
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

# wasm-bindgen's CLI must be the version of the wasm-bindgen crate in Cargo.lock; installed
# once from crates.io into a directory outside the clone.
TOOLS="${KALAMDB_TOOLS:-/var/tmp/kalamdb-tools}"
wasm_bindgen_version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if [ "$("$TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}')" != "$wasm_bindgen_version" ]; then
  # Without --locked: the CLI's own lockfile pins a crate version the index no longer has.
  cargo install wasm-bindgen-cli --version "=$wasm_bindgen_version" --root "$TOOLS"
fi
export WASM_BINDGEN="$TOOLS/bin/wasm-bindgen"

started=$(date +%s)
cargo fmt --all -- --check
cargo build --workspace --locked --bins
cargo check -p kalam-link --locked --target wasm32-unknown-unknown
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# The TypeScript SDK, built from source, then its Node.js and headless-Chromium tests
# against the binaries just built.
(cd link/sdk/typescript && npm ci --no-audit --no-fund --loglevel=error && ./build.sh && npm test)
# The systemd units must verify cleanly against the binaries just built (warnings count).
unit_dir=$(mktemp -d)
for unit in systemd/*.service systemd/*.socket; do
  sed "s|/usr/local/bin/|$CARGO_TARGET_DIR/debug/|" "$unit" > "$unit_dir/$(basename "$unit")"
done
out=$(cd "$unit_dir" && systemd-analyze verify --man=no ./*.service ./*.socket 2>&1 || true)
rm -rf "$unit_dir"
if [ -n "$out" ]; then
  echo "systemd units do not verify:" >&2
  echo "$out" >&2
  exit 1
fi
# The Docker image's recipe, run without Docker.
docker/check-recipe.sh
echo "test suite passed in $(( $(date +%s) - started ))s"
