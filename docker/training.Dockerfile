# auscult training: TensorFlow (CPU) + tf2onnx, installs `.[train]`.
#
#   docker build -f docker/training.Dockerfile -t auscult-training .
#   docker run --rm -v "$PWD/data:/app/data" -v "$PWD/artifacts:/app/artifacts" \
#       auscult-training fit --data /app/data/gearbox --out /app/artifacts/gearbox-retrained
#
# Same build args as docker/service.Dockerfile (BASE_IMAGE, PIP_CERT). Runs as
# root so that it can write bundles into a bind-mounted ./artifacts.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS runtime-base
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLBACKEND=Agg
RUN set -eux; \
    if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            python3 python3-venv ca-certificates; \
        apt-get clean; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    python3 -m venv /opt/venv

# Requirements (base + "serve" + "train" extras) read from pyproject.toml in a
# stage of their own, so that only their content keys the dependency layer.
FROM runtime-base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; x = p["optional-dependencies"]; print("\n".join(r for r in p["dependencies"] + x["serve"] + x["train"] if not r.startswith("auscult")))' \
        > /tmp/requirements.txt

FROM runtime-base
ARG PIP_CERT=
LABEL org.opencontainers.image.title="auscult-training" \
      io.auscult.image="training"

COPY --from=requirements /tmp/requirements.txt /tmp/auscult/requirements.txt
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    pip install -r /tmp/auscult/requirements.txt; \
    rm -rf /tmp/auscult

COPY pyproject.toml README.m[d] /tmp/auscult/
COPY service /tmp/auscult/service
COPY training /tmp/auscult/training
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    cd /tmp/auscult; \
    [ -f README.md ] || echo "# auscult" > README.md; \
    pip install --no-deps .; \
    cd /; rm -rf /tmp/auscult; \
    python -c "import training.__main__"; \
    mkdir -p /app/artifacts /app/data /app/jobs

WORKDIR /app
VOLUME ["/app/artifacts", "/app/data", "/app/jobs"]

ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]
