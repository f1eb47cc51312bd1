#!/usr/bin/env bash
# Builds @kalamdb/kalam-link from source, offline:
#   kalam-link (feature `wasm`) → wasm32-unknown-unknown → wasm-bindgen (web target) → wasm/
#   src/*.ts → tsc → dist/
# Needs the wasm32 target (`rustup target add wasm32-unknown-unknown`), `wasm-bindgen` of the
# exact version Cargo.lock pins (`cargo install wasm-bindgen-cli --version =<that>`; set
# WASM_BINDGEN to use another path) and `npm ci` done here.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../../.. && pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
wasm_bindgen=${WASM_BINDGEN:-wasm-bindgen}

want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' "$root/Cargo.lock")
have=$("$wasm_bindgen" --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
  echo "build.sh: wasm-bindgen $want is needed (found '${have:-none}'):" >&2
  echo "  cargo install wasm-bindgen-cli --version =$want" >&2
  exit 1
fi

(cd "$root" && cargo rustc -p kalam-link --locked --lib --crate-type cdylib --profile wasm-release \
  --target wasm32-unknown-unknown --no-default-features --features wasm)
rm -rf wasm dist
"$wasm_bindgen" "$target_dir/wasm32-unknown-unknown/wasm-release/kalam_link.wasm" \
  --target web --out-dir wasm --out-name kalam_link
./node_modules/.bin/tsc -p tsconfig.json
echo "build.sh: wasm/kalam_link_bg.wasm $(wc -c < wasm/kalam_link_bg.wasm) bytes; dist/ built"
