# auscult scoring service: FastAPI + onnxruntime, no TensorFlow (installs `.[serve]` only).
#
#   docker build -f docker/service.Dockerfile -t auscult-service .
#   docker run -p 8000:8000 -v "$PWD/artifacts:/app/artifacts:ro" auscult-service
#
# BASE_IMAGE: python:3.11-slim by default, or any plain Debian bookworm image
# without Python (python3 3.11 is then installed with apt), e.g. a local base on
# a machine that cannot pull from a registry.
# PIP_CERT: empty by default; set it to the path of a CA bundle mounted into the
# build when pip must trust an extra CA (docker/smoke.sh shows it with podman).
ARG BASE_IMAGE=python:3.11-slim

# ---- Python (only where the base has none), a venv and the unprivileged user
FROM ${BASE_IMAGE} AS runtime-base
# every stage carries the label, so `podman image prune --filter label=...` (docker/smoke.sh)
# also removes the intermediate stages a build leaves untagged
LABEL io.auscult.image="service"
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv; \
    groupadd --gid 10001 auscult; \
    useradd --uid 10001 --gid auscult --home-dir /app --no-create-home --no-log-init \
        --shell /usr/sbin/nologin auscult

# ---- the runtime requirements (base + "serve" extra) read from pyproject.toml;
# only this file's content keys the dependency layer below, so editing other
# parts of pyproject.toml does not reinstall the dependencies
FROM runtime-base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; print("\n".join(r for r in p["dependencies"] + p["optional-dependencies"]["serve"] if not r.startswith("auscult")))' \
        > /tmp/requirements.txt

# ---- the image
FROM runtime-base
ARG PIP_CERT=
LABEL org.opencontainers.image.title="auscult-service" \
      org.opencontainers.image.description="auscult: machine-sound anomaly scoring over REST" \
      io.auscult.image="service"

# Dependencies in their own cached layer; the libraries' own test suites
# (~80 MB) are dropped in the same step.
COPY --from=requirements /tmp/requirements.txt /tmp/auscult/requirements.txt
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    pip install -r /tmp/auscult/requirements.txt; \
    rm -rf /tmp/auscult; \
    site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    for pkg in numpy scipy onnxruntime PIL soxr; do \
        find "$site/$pkg" -depth -type d -name tests -exec rm -rf {} + 2>/dev/null || true; \
    done; \
    du -sh /opt/venv

# The package itself: service/ only (training/ is not needed at run time; the
# package discovery in pyproject.toml simply finds no training* here). The
# import check catches a missing dependency at build time, not at start-up.
COPY pyproject.toml README.m[d] /tmp/auscult/
COPY service /tmp/auscult/service
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    cd /tmp/auscult; \
    [ -f README.md ] || echo "# auscult" > README.md; \
    pip install --no-deps .; \
    cd /; rm -rf /tmp/auscult; \
    python -c "import service.app, service.__main__"; \
    for dist in tensorflow tensorflow-cpu librosa numba llvmlite; do \
        if pip show "$dist" >/dev/null 2>&1; then \
            echo "$dist must not be in the service image" >&2; exit 1; \
        fi; \
    done; \
    mkdir -p /app/artifacts

WORKDIR /app
USER auscult:auscult

ENV AUSCULT_ARTIFACTS_DIR=/app/artifacts
EXPOSE 8000

# Ready = at least one bundle loaded (GET /readyz answers 200).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
