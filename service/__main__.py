"""`python -m service [--host 127.0.0.1] [--port 8000]`: run the API with uvicorn, in
AUSCULT_WORKERS processes (default: the CPUs available; service/serving/workers.py)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from service.serving.process import available_cpus, configure
from service.settings import Settings, load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    configure()  # before numpy loads (service/serving/process.py)
    settings = load_settings()  # a bad AUSCULT_* variable: one line, exit status 2
    workers = settings.workers or available_cpus()
    if workers > 1:
        # before anything imports prometheus_client: it picks its mode on import
        from service.serving.workers import prepare_multiprocess_metrics, serve_workers

        prepare_multiprocess_metrics()
        raise SystemExit(
            serve_workers(settings, args.host, args.port, workers, _uvicorn_kwargs(settings))
        )
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # one process: plain metrics

    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, **_uvicorn_kwargs(settings))


def _uvicorn_kwargs(settings: Settings) -> dict[str, Any]:
    from service.serving.server import uvicorn_options
    from service.serving.workers import GRACEFUL_S

    return {
        "log_level": settings.log_level,
        "access_log": False,  # the app writes its own JSON access lines
        "timeout_graceful_shutdown": GRACEFUL_S,
        **uvicorn_options(settings),  # connection, header and timeout limits
    }


if __name__ == "__main__":
    main()
