#!/usr/bin/env bash
# Container smoke test: build the service image and run docker-compose.yml with
# podman + podman-compose, wait for /readyz, score a generated wav clip through
# the container, print the image size and the memory at rest, tear down.
#
#   docker/smoke.sh                       # from anywhere in the repo
#   AUSCULT_SETUP_PODMAN=1 docker/smoke.sh   # first run docker/setup-podman.sh (root)
#
# Exit status: 0 passed, 77 skipped (no podman / podman-compose / base image;
# the reason is printed as "SKIP: ..."), anything else failed.
#
# Env (all optional):
#   BASE_IMAGE              build base; default localhost/debian:bookworm when that
#                           image exists, else python:3.11-slim
#   AUSCULT_HOST_ARTIFACTS  bundle folder to serve (default ./artifacts)
#   AUSCULT_PORT            port to serve on (default: a free one)
#   AUSCULT_BUILD_CA        CA bundle mounted into the build for pip
#                           (default /etc/ssl/certs/ca-certificates.crt if present)
#   PODMAN_COMPOSE          podman-compose command (default: on PATH, or the venv
#                           docker/setup-podman.sh makes)
#   SMOKE_BUILD_TIMEOUT, SMOKE_READY_TIMEOUT   seconds (default 480, 120)
#   SMOKE_KEEP=1            leave the stack running
set -euo pipefail

SKIP=77
log() { printf '[smoke] %s\n' "$*"; }
skip() { printf 'SKIP: %s\n' "$*"; exit "$SKIP"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [ "${AUSCULT_SETUP_PODMAN:-0}" = 1 ]; then
  log "AUSCULT_SETUP_PODMAN=1: running docker/setup-podman.sh"
  bash docker/setup-podman.sh
fi

# ---- tools ---------------------------------------------------------------
command -v podman >/dev/null 2>&1 || skip "podman is not installed (docker/setup-podman.sh installs it)"
if [ -z "${PODMAN_COMPOSE:-}" ]; then
  if command -v podman-compose >/dev/null 2>&1; then
    PODMAN_COMPOSE=podman-compose
  elif [ -x /opt/podman-compose/bin/podman-compose ]; then
    PODMAN_COMPOSE=/opt/podman-compose/bin/podman-compose
  else
    skip "podman-compose is not installed (docker/setup-podman.sh installs it)"
  fi
fi
podman_err=$(podman info 2>&1 >/dev/null) || skip "podman is not usable here: $(printf '%s' "$podman_err" | tail -n1)"
"$PODMAN_COMPOSE" --version >/dev/null 2>&1 || skip "$PODMAN_COMPOSE does not run"
for tool in curl python3 timeout; do
  command -v "$tool" >/dev/null 2>&1 || skip "$tool is not installed"
done

if [ -z "${BASE_IMAGE:-}" ]; then
  if podman image exists localhost/debian:bookworm; then
    BASE_IMAGE=localhost/debian:bookworm
  elif podman image exists docker.io/library/python:3.11-slim; then
    BASE_IMAGE=docker.io/library/python:3.11-slim
  elif timeout 120 podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=docker.io/library/python:3.11-slim
  else
    skip "no base image: localhost/debian:bookworm is missing and python:3.11-slim cannot be pulled (docker/setup-podman.sh makes the first)"
  fi
fi
export BASE_IMAGE

# ---- what to serve -------------------------------------------------------
export AUSCULT_HOST_ARTIFACTS=${AUSCULT_HOST_ARTIFACTS:-./artifacts}
artifacts_abs=$(cd "$ROOT" && cd "$AUSCULT_HOST_ARTIFACTS" 2>/dev/null && pwd) \
  || fail "artifacts folder $AUSCULT_HOST_ARTIFACTS does not exist"
ls "$artifacts_abs"/*/manifest.json >/dev/null 2>&1 \
  || fail "no model bundle (*/manifest.json) in $AUSCULT_HOST_ARTIFACTS"
# docker-compose.yml defaults AUSCULT_DEFAULT_MODEL to the committed "gearbox";
# another folder gets its first anomaly bundle as the default instead
if [ -z "${AUSCULT_DEFAULT_MODEL:-}" ] && [ ! -f "$artifacts_abs/gearbox/manifest.json" ]; then
  AUSCULT_DEFAULT_MODEL=$(python3 - "$artifacts_abs" <<'PY'
import json, pathlib, sys
for m in sorted(pathlib.Path(sys.argv[1]).glob("*/manifest.json")):
    if json.loads(m.read_text()).get("kind", "anomaly") == "anomaly":
        print(m.parent.name)
        break
PY
)
  [ -n "$AUSCULT_DEFAULT_MODEL" ] || fail "no anomaly bundle in $AUSCULT_HOST_ARTIFACTS"
  export AUSCULT_DEFAULT_MODEL
fi

if [ -z "${AUSCULT_PORT:-}" ]; then
  AUSCULT_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
export AUSCULT_PORT
BASE_URL="http://127.0.0.1:$AUSCULT_PORT"

PROJECT="auscult-smoke-$$"
IMAGE=localhost/auscult-service:latest
BUILD_CACHE=localhost/auscult-service-build:cache
WORK=$(mktemp -d "${TMPDIR:-/tmp}/auscult-smoke.XXXXXX")
compose() { "$PODMAN_COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" "$@"; }

started=0
cleanup() {
  rc=$?
  if [ "$started" = 1 ]; then
    if [ "$rc" -ne 0 ]; then
      log "container logs (last 60 lines):"
      podman logs --tail 60 "$(container_id 2>/dev/null)" 2>&1 | sed 's/^/    /' || true
    fi
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
      log "SMOKE_KEEP=1: leaving project $PROJECT up (tear down: $PODMAN_COMPOSE -p $PROJECT down)"
    else
      log "tearing down"
      timeout 120 "$PODMAN_COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" down >"$WORK/down.log" 2>&1 \
        || { log "compose down failed:"; tail -n 20 "$WORK/down.log"; }
    fi
  fi
  rm -rf "$WORK"
  if [ "$rc" -eq 0 ]; then log "PASS"; elif [ "$rc" -ne "$SKIP" ]; then log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

container_id() {
  podman ps -a -q --filter "label=com.docker.compose.project=$PROJECT" | head -n1
}

log "podman $(podman version --format '{{.Client.Version}}'), $("$PODMAN_COMPOSE" --version 2>/dev/null | head -n1)"
log "base image $BASE_IMAGE, artifacts $AUSCULT_HOST_ARTIFACTS (default model ${AUSCULT_DEFAULT_MODEL:-gearbox}), port $AUSCULT_PORT"

# ---- build ---------------------------------------------------------------
build_args="--format docker"   # docker format keeps the HEALTHCHECK (OCI drops it)
ca=${AUSCULT_BUILD_CA-/etc/ssl/certs/ca-certificates.crt}
if [ -n "$ca" ] && [ -f "$ca" ]; then
  build_args="$build_args -v $ca:/run/host-ca.crt:ro"
  export BUILD_PIP_CERT=/run/host-ca.crt
else
  export BUILD_PIP_CERT=
fi
log "building $IMAGE (podman-compose build auscult)"
t0=$(date +%s)
if ! timeout "${SMOKE_BUILD_TIMEOUT:-480}" "$PODMAN_COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" \
    --podman-build-args "$build_args" build auscult >"$WORK/build.log" 2>&1; then
  tail -n 40 "$WORK/build.log"
  fail "image build failed or timed out"
fi
podman image exists "$IMAGE" || { tail -n 40 "$WORK/build.log"; fail "build did not produce $IMAGE"; }
log "built in $(( $(date +%s) - t0 )) s"
# the image is FROM scratch (docker/service.Dockerfile), so the stage that installs and
# slims the dependencies is not among its layers: tag that stage (a cache hit, seconds)
# to keep it as the cache of the next build, which then takes seconds too
# shellcheck disable=SC2086
podman build $build_args --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg PIP_CERT="$BUILD_PIP_CERT" \
  --target rootfs -t "$BUILD_CACHE" -f "$ROOT/docker/service.Dockerfile" "$ROOT" >"$WORK/cache.log" 2>&1 \
  || log "could not tag the build stages as $BUILD_CACHE (the next build starts over)"
# drop superseded builds and the untagged intermediate stages (every stage carries the
# label); layers still in use by the image or $BUILD_CACHE are kept as the cache
podman image prune -f --filter label=io.auscult.image=service >/dev/null 2>&1 || true
dangling=$(podman images -q --filter dangling=true --filter label=io.auscult.image=service | wc -l)
log "dangling auscult images left: $dangling"

# ---- up ------------------------------------------------------------------
# the service alone: the trainer's image (TensorFlow) is not built here
log "starting the service (podman-compose up -d auscult)"
started=1
timeout 120 "$PODMAN_COMPOSE" -p "$PROJECT" -f "$ROOT/docker-compose.yml" up -d auscult >"$WORK/up.log" 2>&1 \
  || { tail -n 40 "$WORK/up.log"; fail "podman-compose up failed"; }
CID=$(container_id)
[ -n "$CID" ] || { tail -n 40 "$WORK/up.log"; fail "no container for project $PROJECT"; }

ready_timeout=${SMOKE_READY_TIMEOUT:-120}
t0=$(date +%s)
until curl -fsS -o /dev/null "$BASE_URL/readyz" 2>/dev/null; do
  state=$(podman inspect --format '{{.State.Status}}' "$CID" 2>/dev/null || echo gone)
  [ "$state" = running ] || fail "container is $state before /readyz answered 200"
  [ $(( $(date +%s) - t0 )) -lt "$ready_timeout" ] || fail "/readyz not 200 after ${ready_timeout} s"
  sleep 1
done
log "ready after $(( $(date +%s) - t0 )) s: $(curl -fsS "$BASE_URL/readyz")"
curl -fsS -o /dev/null "$BASE_URL/healthz" || fail "/healthz is not 200"

# ---- checks inside the container -----------------------------------------
uid=$(podman exec "$CID" id -u)
[ "$uid" != 0 ] || fail "the service runs as root"
log "runs as uid $uid"
podman exec "$CID" python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("tensorflow") is not None)' \
  || fail "tensorflow is importable in the service image"
log "no tensorflow in the image"
if podman healthcheck run "$CID" >/dev/null 2>&1; then
  log "image healthcheck: healthy"
else
  fail "podman healthcheck run $CID: unhealthy"
fi

# ---- memory at rest (ready, nothing scored yet) ---------------------------
sleep 3
mem_rest=$(podman stats --no-stream --format '{{.MemUsage}}' "$CID" 2>/dev/null | head -n1 || true)
if [ -z "$mem_rest" ]; then   # stats unavailable: the main process's resident set instead
  pid=$(podman inspect --format '{{.State.Pid}}' "$CID")
  mem_rest="$(awk '/VmRSS/ {printf "%.1f MiB RSS", $2 / 1024}' "/proc/$pid/status")"
fi

# the server processes (a supervisor and AUSCULT_WORKERS workers, by default one per CPU
# the container may use) and the resident memory of each
server_processes() {
  podman exec "$CID" python -c '
import os
for p in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    try:
        cmd = open("/proc/%s/cmdline" % p).read().replace("\0", " ")
        st = dict(line.split(":", 1) for line in open("/proc/%s/status" % p) if ":" in line)
    except OSError:
        continue
    if "-m service" in cmd and p != str(os.getpid()):  # not this python -c
        rss = int(st["VmRSS"].split()[0]) / 1024
        print("pid %s (parent %s): %.0f MB RSS" % (p, st["PPid"].strip(), rss))
' 2>/dev/null | paste -sd ';' | sed 's/;/; /g'
}
procs_rest=$(server_processes || true)

# ---- score a clip ----------------------------------------------------------
models_json=$(curl -fsS "$BASE_URL/v1/models") || fail "GET /v1/models failed"
MODEL=$(printf '%s' "$models_json" | python3 -c '
import json, sys
body = json.load(sys.stdin)
items = body.get("models", body) if isinstance(body, dict) else body
ready = [m["name"] for m in items if m.get("status") == "ready" and m.get("kind", "anomaly") == "anomaly"]
default = body.get("default_model") if isinstance(body, dict) else None
print(default if default in ready else (ready[0] if ready else ""))
') || fail "cannot read GET /v1/models: $models_json"
[ -n "$MODEL" ] || fail "no ready anomaly model in GET /v1/models: $models_json"

python3 - "$WORK/clip.wav" <<'PY'
# 2 s of a gearbox-like hum (shaft + mesh harmonics) with noise, 16 kHz mono PCM16.
import math, random, struct, sys, wave
sr, n = 16000, 32000
rng = random.Random(0)
mesh = 25.0 * 23
samples = []
for i in range(n):
    t = i / sr
    x = 0.3 * math.sin(2 * math.pi * 25.0 * t)
    x += sum(a * math.sin(2 * math.pi * k * mesh * t) for k, a in ((1, 0.5), (2, 0.25), (3, 0.12)))
    x += 0.1 * rng.gauss(0, 1)
    samples.append(max(-32767, min(32767, int(x * 12000))))
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(sr)
    w.writeframes(struct.pack(f"<{n}h", *samples))
PY

code=$(curl -sS -o "$WORK/score.json" -w '%{http_code}' -F "file=@$WORK/clip.wav;type=audio/wav" \
  "$BASE_URL/v1/models/$MODEL/score") || fail "POST /v1/models/$MODEL/score: no answer"
[ "$code" = 200 ] || fail "POST /v1/models/$MODEL/score answered $code: $(cat "$WORK/score.json")"
python3 - "$WORK/score.json" <<'PY' || fail "score response lacks a numeric score/level: $(cat "$WORK/score.json")"
import json, math, sys
r = json.load(open(sys.argv[1]))
assert isinstance(r.get("score"), (int, float)) and math.isfinite(r["score"]), r
assert r.get("level") in ("normal", "needs_maintenance", "severe"), r
PY
log "scored clip.wav with $MODEL: $(cat "$WORK/score.json")"

# bad input answers 4xx with the error envelope, never 500
printf 'not audio\n' > "$WORK/bad.txt"
code=$(curl -sS -o "$WORK/bad.json" -w '%{http_code}' -F "file=@$WORK/bad.txt;type=text/plain" \
  "$BASE_URL/v1/models/$MODEL/score") || fail "POST a text file: no answer"
case "$code" in 4??) ;; *) fail "POST a text file answered $code: $(cat "$WORK/bad.json")" ;; esac
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["error"]["code"]' "$WORK/bad.json" \
  || fail "error body without error.code: $(cat "$WORK/bad.json")"
log "bad input: $code $(cat "$WORK/bad.json")"

# ---- report ---------------------------------------------------------------
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $(( size_bytes / 1000000 )) MB ($size_bytes bytes)"
podman images --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' "$IMAGE"
log "memory at rest (ready, before scoring): $mem_rest"
[ -z "$procs_rest" ] || log "server processes at rest: $procs_rest"
mem_after=$(podman stats --no-stream --format '{{.MemUsage}}' "$CID" 2>/dev/null | head -n1 || true)
[ -z "$mem_after" ] || log "memory after one score: $mem_after"
procs_after=$(server_processes || true)
[ -z "$procs_after" ] || log "server processes after one score: $procs_after"
