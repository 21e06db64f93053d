#!/usr/bin/env bash
# podman-compose on docker-compose.yml with the settings a machine without a Docker engine
# or a reachable registry needs (docker/setup-podman.sh prepares it); any arguments are
# podman-compose's own:
#
#   docker/compose.sh up -d --build                      # the service on port 8000
#   docker/compose.sh --profile train run --rm train     # fit ./artifacts/gearbox-retrained
#   docker/compose.sh down
#
# What it sets, unless already set:
#   BASE_IMAGE      localhost/debian:bookworm when that image exists (setup-podman.sh makes
#                   it), else compose's default python:3.11-slim
#   BUILD_PIP_CERT  /run/host-ca.crt, with the host's CA bundle (AUSCULT_BUILD_CA, default
#                   /etc/ssl/certs/ca-certificates.crt) mounted there in every build, so pip
#                   in the service and training builds trusts what the host trusts
#   PODMAN_COMPOSE  podman-compose on PATH, or the venv setup-podman.sh makes
# Builds use --format docker (keeps the HEALTHCHECK, which the OCI format drops).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ -z "${PODMAN_COMPOSE:-}" ]; then
  if command -v podman-compose >/dev/null 2>&1; then
    PODMAN_COMPOSE=podman-compose
  elif [ -x /opt/podman-compose/bin/podman-compose ]; then
    PODMAN_COMPOSE=/opt/podman-compose/bin/podman-compose
  else
    echo "compose.sh: podman-compose is not installed (run docker/setup-podman.sh as root)" >&2
    exit 1
  fi
fi

if [ -z "${BASE_IMAGE:-}" ] && command -v podman >/dev/null 2>&1 \
    && podman image exists localhost/debian:bookworm 2>/dev/null; then
  export BASE_IMAGE=localhost/debian:bookworm
fi

build_args="--format docker"
ca=${AUSCULT_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
if [ -z "${BUILD_PIP_CERT:-}" ] && [ -n "$ca" ] && [ -f "$ca" ]; then
  build_args="$build_args -v $ca:/run/host-ca.crt:ro"
  export BUILD_PIP_CERT=/run/host-ca.crt
fi

cd "$ROOT"
exec "$PODMAN_COMPOSE" --podman-build-args "$build_args" "$@"  # ./docker-compose.yml unless -f
