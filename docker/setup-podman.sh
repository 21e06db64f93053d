#!/usr/bin/env bash
# One-time machine setup for building and running auscult's containers with
# podman + podman-compose on a Debian host that has no Docker engine and no
# reachable container registry. Idempotent: every step is skipped when done.
#
#   sudo docker/setup-podman.sh
#
# Steps:
#   1. apt-get install podman runc debootstrap
#   2. /etc/containers/containers.conf (only if absent) for hosts without
#      systemd / cgroup delegation / raisable rlimits: runc, cgroupfs, host
#      network namespace, fixed ulimits
#   3. podman-compose (PyPI) in a venv at $PODMAN_COMPOSE_VENV (/opt/podman-compose),
#      linked as $PODMAN_COMPOSE_LINK (/usr/local/bin/podman-compose) so it is on PATH
#   4. a local base image $BASE_IMAGE_NAME (localhost/debian:bookworm) made with
#      debootstrap, so builds need no registry (about 2 minutes)
#
# Env: PODMAN_COMPOSE_VENV, PODMAN_COMPOSE_LINK, BASE_IMAGE_NAME, CONTAINERS_CONF
#      (/etc/containers/containers.conf), SKIP_BASE_IMAGE=1 (skip step 4),
#      REBUILD_BASE_IMAGE=1 (make step 4's image again even if it exists).
#
# Then docker/compose.sh runs podman-compose with this machine's build settings (the
# local base image, the host's CA bundle for pip).
set -euo pipefail

PODMAN_COMPOSE_VENV=${PODMAN_COMPOSE_VENV:-/opt/podman-compose}
PODMAN_COMPOSE_LINK=${PODMAN_COMPOSE_LINK:-/usr/local/bin/podman-compose}
BASE_IMAGE_NAME=${BASE_IMAGE_NAME:-localhost/debian:bookworm}
CONF=${CONTAINERS_CONF:-/etc/containers/containers.conf}

log() { printf '[setup-podman] %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-podman.sh must run as root (apt-get, /etc/containers, debootstrap)" >&2
  exit 1
fi

# 1. packages
missing=()
for pkg_cmd in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${pkg_cmd#*:}" >/dev/null 2>&1 || missing+=("${pkg_cmd%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
  log "podman, runc, debootstrap already installed"
fi

# 2. engine config
if [ -e "$CONF" ]; then
  log "$CONF exists, leaving it alone"
else
  log "writing $CONF"
  mkdir -p "$(dirname "$CONF")"
  cat > "$CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=1024:20000", "nproc=1024:1024"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi

# 3. podman-compose
if [ -x "$PODMAN_COMPOSE_VENV/bin/podman-compose" ]; then
  log "podman-compose already in $PODMAN_COMPOSE_VENV"
else
  log "installing podman-compose into $PODMAN_COMPOSE_VENV"
  py=/usr/bin/python3
  [ -x "$py" ] || py=$(command -v python3)
  "$py" -m venv "$PODMAN_COMPOSE_VENV"
  "$PODMAN_COMPOSE_VENV/bin/pip" install --quiet podman-compose
fi
# on PATH (the venv's bin is not): a link, unless another podman-compose is already there
if [ "$(readlink -f "$PODMAN_COMPOSE_LINK" 2>/dev/null)" = "$(readlink -f "$PODMAN_COMPOSE_VENV/bin/podman-compose")" ]; then
  log "podman-compose already linked as $PODMAN_COMPOSE_LINK"
elif [ -e "$PODMAN_COMPOSE_LINK" ]; then
  log "$PODMAN_COMPOSE_LINK exists and is another podman-compose: leaving it alone"
else
  mkdir -p "$(dirname "$PODMAN_COMPOSE_LINK")"
  ln -s "$PODMAN_COMPOSE_VENV/bin/podman-compose" "$PODMAN_COMPOSE_LINK"
  log "linked $PODMAN_COMPOSE_LINK -> $PODMAN_COMPOSE_VENV/bin/podman-compose"
fi

# 4. local base image
if [ "${SKIP_BASE_IMAGE:-0}" = 1 ]; then
  log "SKIP_BASE_IMAGE=1: not making $BASE_IMAGE_NAME"
elif [ "${REBUILD_BASE_IMAGE:-0}" != 1 ] && podman image exists "$BASE_IMAGE_NAME"; then
  log "base image $BASE_IMAGE_NAME already exists"
else
  log "making base image $BASE_IMAGE_NAME with debootstrap (about 2 minutes)"
  rootfs=$(mktemp -d /tmp/auscult-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase bookworm "$rootfs"
  # debootstrap leaves the downloaded .debs and package lists behind (~80 MB)
  find "$rootfs/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -delete
  find "$rootfs/var/lib/apt/lists" -maxdepth 1 -type f -delete
  tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE_NAME"
  log "base image $BASE_IMAGE_NAME ready"
fi

log "done: $(podman --version); $("$PODMAN_COMPOSE_VENV/bin/podman-compose" --version 2>/dev/null | head -n1)"
log "next: docker/compose.sh up -d --build   (podman-compose with BASE_IMAGE=$BASE_IMAGE_NAME and the host's CA for pip)"
