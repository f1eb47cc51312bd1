#!/usr/bin/env bash
# Exercises docker/Dockerfile without a Docker engine (run by scripts/test.sh):
#   1. the files the Dockerfile and docker-compose.yml refer to exist;
#   2. build-steps.sh builds and installs every binary into a staging root (the build stage);
#   3. the binaries need only libraries that debian:bookworm-slim has (the runtime stage);
#   4. the ENTRYPOINT starts with the image's ENV as an unprivileged user, the HEALTHCHECK
#      command passes, and data written before a restart (SIGTERM, exit 0) is there after it.
# The profile is the one the suite built (KALAMDB_PROFILE, default debug); the image uses release.
set -euo pipefail
cd "$(dirname "$0")/.."
export KALAMDB_PROFILE=${KALAMDB_PROFILE:-dev}

fail() { echo "docker recipe: $*" >&2; exit 1; }

# 1. References.
grep -q '^FROM debian:bookworm-slim' docker/Dockerfile || fail "runtime stage is not debian:bookworm-slim"
grep -q '^USER kalamdb' docker/Dockerfile || fail "the image must not run as root"
for f in $(sed -n 's/^ *- *\(\.env[^ ]*\)$/\1/p' docker/docker-compose.yml); do
  [ -f "docker/$f" ] || fail "docker-compose.yml names env_file $f, which does not exist"
done
grep -q 'dockerfile: docker/Dockerfile' docker/docker-compose.yml || fail "compose does not build docker/Dockerfile"
entrypoint=$(sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p' docker/Dockerfile)
[ -n "$entrypoint" ] || fail "no ENTRYPOINT"

# 2. Build stage.
work=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
chmod 0755 "$work"
root="$work/root"
docker/build-steps.sh build "$root"
docker/build-steps.sh runtime "$root"
for b in kalam-supervisor kalamd kalam-flushd kalam-lived kalam; do
  [ -x "$root/usr/local/bin/$b" ] || fail "$b was not installed"
done
[ -x "$root$entrypoint" ] || fail "ENTRYPOINT $entrypoint is not installed"

# 3. Runtime libraries: what bookworm-slim ships (libc6, libgcc-s1, libstdc++6).
allowed='^(libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libstdc\+\+\.so\.6|ld-linux-x86-64\.so\.2|ld-linux-aarch64\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1)$'
for b in "$root"/usr/local/bin/*; do
  for lib in $(objdump -p "$b" | awk '/NEEDED/ {print $2}'); do
    [[ "$lib" =~ $allowed ]] || fail "$(basename "$b") needs $lib, which debian:bookworm-slim lacks"
  done
done

# 4. Runtime stage: the image's ENV, with the data directory and port moved for the test.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data="$root/data"
env_args=()
for kv in $(sed -n 's/^ENV //p' docker/Dockerfile); do env_args+=("$kv"); done
env_args+=("KALAMDB_SERVER_PORT=$port" "KALAMDB_DATA_DIR=$data" "KALAMDB_LOG_DIR=$data/logs" "HOME=$data" "PATH=$root/usr/local/bin:/usr/bin:/bin")
as_user=()
if [ "$(id -u)" -eq 0 ]; then
  chown -R 65534:65534 "$data"
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
# The exec form is a JSON array.
mapfile -t health < <(sed -n 's/^HEALTHCHECK .*CMD \(\[.*\]\)$/\1/p' docker/Dockerfile |
  python3 -c 'import json, sys; print("\n".join(json.loads(sys.stdin.read() or "[]")))')
[ "${#health[@]}" -gt 0 ] || fail "no HEALTHCHECK CMD"
# The health check talks to the container's own port 8080; here the port is moved.
healthy() { env -i "${env_args[@]}" "${as_user[@]}" "$root/usr/local/bin/${health[0]}" "${health[@]:1}" --port "$port" >/dev/null 2>&1; }
query() { env -i "${env_args[@]}" "${as_user[@]}" "$root/usr/local/bin/kalam" --port "$port" --json -c "$1"; }

start() {
  (cd "$data" && exec env -i "${env_args[@]}" "${as_user[@]}" "$root$entrypoint" >>"$work/entrypoint.out" 2>&1) &
  pid=$!
  for _ in $(seq 1 300); do
    healthy && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$work/entrypoint.out" >&2; fail "the entrypoint exited at start"; }
    sleep 0.2
  done
  cat "$work/entrypoint.out" >&2
  fail "the HEALTHCHECK command did not pass within 60 s"
}
stop() {
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  pid=""
  [ "$rc" -eq 0 ] || { cat "$work/entrypoint.out" >&2; fail "the entrypoint exited with $rc on SIGTERM"; }
}

start
query "CREATE NAMESPACE app; CREATE SHARED TABLE app.kv (k TEXT PRIMARY KEY, v TEXT); INSERT INTO app.kv VALUES ('volume', 'kept')" >/dev/null \
  || fail "cannot write through the container's entrypoint"
stop
start
kept=$(query "SELECT v FROM app.kv WHERE k = 'volume'") || fail "cannot read after a restart"
grep -q '"kept"' <<<"$kept" || fail "data did not survive a restart"
[ -s "$data/logs/kalamd.log" ] || fail "no log file under the volume"
stop
echo "docker recipe: build steps, runtime libraries, entrypoint, health check and volume OK"
