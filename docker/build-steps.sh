#!/usr/bin/env bash
# The steps of docker/Dockerfile. The image runs them inside Docker; the test suite runs them
# without Docker (docker/check-recipe.sh), so that the recipe is exercised on every change.
#
#   build-steps.sh deps            system packages the build stage needs (Debian)
#   build-steps.sh build ROOT      build the binaries and install them into ROOT/usr/local/bin
#                                  (release profile; KALAMDB_PROFILE=debug for a quick check)
#   build-steps.sh runtime ROOT    the runtime stage's setup: user kalamdb and its /data volume
#                                  (creates the user only when ROOT is /, as in the image)
set -euo pipefail

# What the runtime image holds: the supervisor, the three daemons and the CLI (health check).
BINARIES=(kalam-supervisor kalamd kalam-flushd kalam-lived kalam)

step=${1:-}
root=${2:-}
case "$step" in
  deps)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends clang libclang-dev
    rm -rf /var/lib/apt/lists/*
    ;;
  build)
    [ -n "$root" ] || { echo "usage: $0 build ROOT" >&2; exit 2; }
    profile=${KALAMDB_PROFILE:-release}
    cd "$(dirname "$0")/.."
    # Every binary of the workspace, exactly as the test suite builds them: selecting a subset
    # with --bin resolves dependency features differently and compiles DataFusion a second time.
    cargo build --profile "$profile" --locked --workspace --bins
    [ "$profile" = dev ] && profile=debug
    target=${CARGO_TARGET_DIR:-target}
    install -d "$root/usr/local/bin"
    for b in "${BINARIES[@]}"; do
      install -m 0755 "$target/$profile/$b" "$root/usr/local/bin/$b"
    done
    ;;
  runtime)
    [ -n "$root" ] || { echo "usage: $0 runtime ROOT" >&2; exit 2; }
    if [ "$root" = / ]; then
      id kalamdb >/dev/null 2>&1 || useradd --system --home-dir /data --no-create-home --shell /usr/sbin/nologin kalamdb
      install -d -o kalamdb -g kalamdb -m 0750 /data
    else
      install -d -m 0750 "$root/data"
    fi
    ;;
  *)
    echo "usage: $0 deps | build ROOT | runtime ROOT" >&2
    exit 2
    ;;
esac
