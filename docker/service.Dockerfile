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
#
# The image is FROM scratch: a slimmed root file system, the slimmed venv and the
# package, each one layer (342 MB measured; docs/operations.md, "Containers").
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

# ---- the dependencies, installed and then slimmed; the image takes /opt/venv from
# this stage (and, through the rootfs stage, the standard library's pruned .pyc files)
FROM runtime-base AS deps
ARG PIP_CERT=
COPY --from=requirements /tmp/requirements.txt /tmp/auscult/requirements.txt
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    pip install -r /tmp/auscult/requirements.txt; \
    rm -rf /tmp/auscult

# Slimming, each step safe for what the service runs (issue 14: 522 MB before):
# - the libraries' own test suites (~80 MB), type stubs, C headers and Cython sources;
# - debug symbols and symbol tables of the compiled modules (strip --strip-unneeded
#   keeps what the dynamic linker needs; binutils only in this stage). Not the
#   vendored libraries in *.libs/: auditwheel's patchelf edits make strip break them
#   (numpy: "ELF load command address/offset not page-aligned");
# - onnxruntime's C-API library (34 MB, for native programs: the Python API has it all
#   in onnxruntime_pybind11_state and never maps it) and its offline tools
#   (model optimizers, quantization, converters, and the onnxruntime_test script);
# - numpy.distutils, numpy's old build system (the image has no compiler; f2py stays:
#   scipy's `from numpy import *` imports it);
# - pip, setuptools and wheel: the image installs nothing at run time;
# - a second copy of a vendored library numpy's wheel also ships (the same file under
#   the same hashed name in numpy.libs and scipy.libs) becomes a symlink to it.
RUN set -eux; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils; \
    site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    for pkg in numpy scipy onnxruntime PIL soxr; do \
        find "$site/$pkg" -depth -type d -name tests -exec rm -rf {} + 2>/dev/null || true; \
    done; \
    find "$site" \( -name '*.pyi' -o -name '*.h' -o -name '*.pxd' \) -type f -delete; \
    find "$site" -type f -name '*.so*' -not -path '*.libs/*' -exec strip --strip-unneeded {} +; \
    rm -rf "$site"/onnxruntime/capi/libonnxruntime.so.* "$site"/onnxruntime/transformers \
        "$site"/onnxruntime/quantization "$site"/onnxruntime/tools \
        "$site"/numpy/distutils /opt/venv/bin/onnxruntime_test; \
    for lib in "$site"/scipy.libs/*; do \
        twin="$site/numpy.libs/${lib##*/}"; \
        if [ -f "$twin" ] && cmp -s "$lib" "$twin"; then ln -sf "../numpy.libs/${lib##*/}" "$lib"; fi; \
    done; \
    python -m pip uninstall -y pip setuptools wheel; \
    rm -f /opt/venv/bin/pip* /opt/venv/bin/wheel; \
    du -sh /opt/venv

# The check (docker/image_check.py): every compiled library the service loads still
# works after the slimming, and the server starts and answers (the service's code from
# the build context, not installed here). pip compiled a .pyc for every module (~39 MB)
# and the base one for the whole standard library (~14 MB), most of them never
# imported: the check runs with those __pycache__ folders emptied and bytecode writing
# on, so .pyc files remain for what the service imports (a module imported later
# without one is compiled in memory, as the file system is read-only).
COPY docker/image_check.py /tmp/check/image_check.py
COPY service /tmp/check/service
RUN set -eux; \
    stdlib=$(python -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])'); \
    find /opt/venv "$stdlib" -depth -type d -name __pycache__ -exec rm -rf {} +; \
    cd /tmp/check; \
    env -u PYTHONDONTWRITEBYTECODE python image_check.py; \
    cd /; rm -rf /tmp/check; \
    du -sh /opt/venv

# ---- the package itself: service/ only (training/ is not needed at run time; the
# package discovery in pyproject.toml simply finds no training* here), into a folder
# of its own that the image adds to the venv
FROM runtime-base AS app
ARG PIP_CERT=
COPY pyproject.toml README.m[d] /tmp/auscult/
COPY service /tmp/auscult/service
RUN set -eux; \
    if [ -z "$PIP_CERT" ]; then unset PIP_CERT; fi; \
    cd /tmp/auscult; \
    [ -f README.md ] || echo "# auscult" > README.md; \
    pip install --no-deps --target /tmp/site .

# ---- the root filesystem without what a Python service never reads: documentation,
# man pages, message translations, apt's package lists and caches, pip's wheels, the
# standard library's build and conversion tools (distutils, lib2to3, ensurepip), and
# the venv (copied on its own below), and on python:3.11-slim its own pip, setuptools
# and wheel. It is the deps stage's, for the standard library's pruned .pyc files,
# without the binutils installed there. dpkg and apt stay, so an image built FROM
# this one can still apt-get install.
FROM deps AS rootfs
RUN set -eux; \
    DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove binutils; \
    rm -rf /opt/venv \
        /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* \
        /usr/share/lintian /usr/share/python-wheels \
        /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/*.log \
        /var/log/apt/*; \
    for lib in /usr/lib/python3.11 /usr/local/lib/python3.11; do \
        rm -rf "$lib/distutils" "$lib/lib2to3" "$lib/ensurepip"; \
    done; \
    rm -rf /usr/local/lib/python3.*/site-packages/pip* \
        /usr/local/lib/python3.*/site-packages/setuptools* \
        /usr/local/lib/python3.*/site-packages/_distutils_hack \
        /usr/local/lib/python3.*/site-packages/distutils-precedence.pth \
        /usr/local/lib/python3.*/site-packages/wheel* \
        /usr/local/bin/pip* /usr/local/bin/wheel

# ---- the image: that root filesystem as one layer (files removed in a later layer
# would still count), then the venv, then the package. A change to service/ re-runs the
# check above, so all three layers are made anew (same files, new .pyc timestamps).
FROM scratch
LABEL org.opencontainers.image.title="auscult-service" \
      org.opencontainers.image.description="auscult: machine-sound anomaly scoring over REST" \
      io.auscult.image="service"
ENV LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY --from=rootfs / /
COPY --from=deps /opt/venv /opt/venv
# (both kinds of base have Python 3.11)
COPY --from=app /tmp/site/ /opt/venv/lib/python3.11/site-packages/
# The import check catches a missing piece at build time, not at start-up.
RUN set -eux; \
    python -c "import service.app, service.__main__"; \
    mkdir -p /app/artifacts /app/jobs; \
    chown auscult:auscult /app/jobs

WORKDIR /app
USER auscult:auscult

ENV AUSCULT_ARTIFACTS_DIR=/app/artifacts
EXPOSE 8000

# Ready = at least one bundle loaded (GET /readyz answers 200).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000"]
