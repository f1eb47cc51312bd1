#!/usr/bin/env bash
# The benchmarks in one command: a release build, then kalam-bench against a server of that
# build in a temporary directory. Results go to bench-results/<time>.json and are compared
# with the newest earlier file there (or with --compare FILE).
#
#   scripts/bench.sh                  full run (about 10 minutes on 2 cores)
#   scripts/bench.sh --quick          every benchmark at small sizes (a smoke test)
#   scripts/bench.sh lived|flushd|kalamd [flags]   one daemon alone against fakes of its peers
#   scripts/bench.sh --help           every flag
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kalamdb-target}"
cargo build --release --locked --workspace --bins
bench="$CARGO_TARGET_DIR/release/kalam-bench"
case " $* " in
  *" --help "* | *" -h "*) exec "$bench" "$@" ;;
esac
mkdir -p bench-results
name=$(date -u +%Y%m%dT%H%M%SZ)
[ "${1:-}" = lived ] || [ "${1:-}" = flushd ] || [ "${1:-}" = kalamd ] && name="$1-$name"
out="bench-results/$name.json"
args=("$@" --out "$out")
case " $* " in
  *" --compare "*) ;;
  *)
    # The newest earlier results of the same kind (full run or the same driver).
    prefix=""
    [ "${1:-}" = lived ] || [ "${1:-}" = flushd ] || [ "${1:-}" = kalamd ] && prefix="$1-"
    previous=$(ls -1 bench-results/"$prefix"2*.json 2>/dev/null | tail -n 1 || true)
    [ -n "$previous" ] && args+=(--compare "$previous")
    ;;
esac
"$bench" "${args[@]}"
