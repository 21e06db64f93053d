# The image of a Ray cluster that runs `python -m bulk` (deploy/k8s/bulk-rayjob.yaml):
# Ray's own image (what KubeRay's probes expect) plus the project's bulk extra.
#
#   docker build -f deploy/bulk.Dockerfile -t auscult-bulk .
#
# RAY_VERSION must be the version the bulk extra installs (pip check fails otherwise).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-cpu
ARG RAY_VERSION
WORKDIR /home/ray/auscult
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users service ./service
COPY --chown=ray:users bulk ./bulk
ENV RAY_USAGE_STATS_ENABLED=0 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install ".[bulk]" "ray[data]==${RAY_VERSION}" && pip check
