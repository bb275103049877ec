#!/usr/bin/env bash
# Builds the container image with podman and smoke-tests it: start, /healthz 200, the image's
# own HEALTHCHECK, one Connect call, non-root user, SIGTERM exits 0, the SQLite volume survives
# a restart. Usage: bash scripts/container_smoke.sh   (as root; installs podman if missing)
#
# This machine (a Firecracker VM, Debian 12) needs three things before podman runs anything,
# each found by trial (issue 12's packaging note):
# - no CAP_SYS_RESOURCE: podman's default rlimits (nofile 1048576) fail with "crun: setrlimit
#   `RLIMIT_NOFILE`: Operation not permitted", so every build and run passes --ulimit;
# - cgroup v1 with the hugetlb controller left on the v2 hierarchy: crun refuses with "cgroups
#   in hybrid mode not supported, drop all controllers from cgroupv2" until hugetlb is mounted
#   as a v1 hierarchy;
# - no registry (docker.io does not resolve): when python:3.11-slim is not in local storage, a
#   stand-in is built from the Debian mirror with debootstrap (bookworm's Python is 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/delidev-server:smoke}
PORT=${SMOKE_PORT:-54881}
NAME=delidev-smoke-$$
VOLUME=delidev-smoke-data-$$
STANDIN=localhost/debian-python:3.11-bookworm
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=65536
ULIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)

if ! command -v podman > /dev/null; then
  apt-get update -q && apt-get install -y -q podman
fi

unified=/sys/fs/cgroup/unified
if [ -r $unified/cgroup.controllers ] && grep -qw hugetlb $unified/cgroup.controllers \
  && ! grep -q ' /sys/fs/cgroup/hugetlb ' /proc/mounts; then
  echo "== moving the hugetlb cgroup controller to a v1 hierarchy (crun refuses hybrid mode)"
  mkdir -p /sys/fs/cgroup/hugetlb
  mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
fi

base=python:3.11-slim
if ! podman image exists docker.io/library/python:3.11-slim \
  && ! timeout 60 podman pull -q docker.io/library/python:3.11-slim > /dev/null 2>&1; then
  base=$STANDIN
  if ! podman image exists $STANDIN; then
    echo "== python:3.11-slim cannot be pulled: building $STANDIN from the Debian mirror"
    command -v debootstrap > /dev/null || apt-get install -y -q debootstrap
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > /dev/null
    tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - $STANDIN > /dev/null
    rm -rf "$rootfs"
  fi
fi

echo "== building $IMAGE from $base"
build=(podman build --format docker "${ULIMITS[@]}" --build-arg "PYTHON_IMAGE=$base" -t "$IMAGE")
cert=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}  # a TLS-intercepting proxy's CA, if any
[ -s "$cert" ] && build+=(--secret "id=pip_cert,src=$cert")
[ -n "${PIP_INDEX_URL:-}" ] && build+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
"${build[@]}" -q . > /dev/null

cleanup() {
  podman rm -f -t 0 "$NAME" > /dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" > /dev/null 2>&1 || true
}
trap cleanup EXIT

start() {
  # The HEALTHCHECK's timer needs systemd (absent here); `podman healthcheck run` runs it.
  podman run -d --name "$NAME" "${ULIMITS[@]}" -p "127.0.0.1:$PORT:54871" \
    --health-interval=disable -v "$VOLUME:/var/lib/delidev" "$IMAGE" > /dev/null
  for _ in $(seq 1 300); do  # polls every 0.1 s, for 30 s at most
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthz")" = 200 ] \
      && return 0
    sleep 0.1
  done
  podman logs "$NAME" >&2
  echo "FAIL: /healthz did not answer 200 within 30 s" >&2
  return 1
}

connect() {  # connect SERVICE/METHOD JSON: prints the answer; fails unless 200
  curl -sf -X POST -H 'content-type: application/json' -d "$2" \
    "http://127.0.0.1:$PORT/delidev.v1.$1"
}

stop() {  # SIGTERM, then the exit code must be 0
  podman stop -t 20 "$NAME" > /dev/null
  code=$(podman inspect "$NAME" --format '{{.State.ExitCode}}')
  [ "$code" = 0 ] || { podman logs "$NAME" >&2; echo "FAIL: exit code $code" >&2; exit 1; }
  podman rm "$NAME" > /dev/null
}

echo "== start"
start
echo "ok: /healthz 200"
podman healthcheck run "$NAME" 2> /dev/null || { echo "FAIL: the image's HEALTHCHECK" >&2; exit 1; }
echo "ok: HEALTHCHECK passes"
uid=$(podman exec "$NAME" id -u)
[ "$uid" != 0 ] || { echo "FAIL: runs as root" >&2; exit 1; }
echo "ok: runs as uid $uid"
answer=$(connect WorkspaceService/Create '{"name": "container-smoke"}')
grep -q '"name":"container-smoke"' <<< "$answer" || { echo "FAIL: $answer" >&2; exit 1; }
echo "ok: Connect WorkspaceService/Create"
stop
echo "ok: SIGTERM, exit 0"
start
grep -q container-smoke <<< "$(connect WorkspaceService/List '{}')" \
  || { echo "FAIL: the workspace did not survive a restart on the volume" >&2; exit 1; }
echo "ok: the SQLite database lives in the volume"
stop
echo "container smoke test passed"
