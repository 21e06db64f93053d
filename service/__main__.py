"""`python -m service [--host 127.0.0.1] [--port 8000]`: run the API with uvicorn, in
AUSCULT_WORKERS processes (default: the CPUs available; service/serving/workers.py)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from service.serving.process import available_cpus, configure
from service.settings import Settings, load_settings

EPILOG = """Everything else is set with AUSCULT_* environment variables, e.g.
AUSCULT_ARTIFACTS_DIR (the bundles' folder, default ./artifacts), AUSCULT_DEFAULT_MODEL,
AUSCULT_WORKERS, AUSCULT_API_KEYS, AUSCULT_ADMIN_KEYS, AUSCULT_LOG_LEVEL: the full list,
with defaults, is service/settings.py (docs/operations.md, "Configuration")."""


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port: use 0 to 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0: every interface, e.g. in a container)",
    )
    parser.add_argument(
        "--port", type=_port, default=8000, help="TCP port (0: any free one, printed at start)"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    configure()  # before numpy loads (service/serving/process.py)
    settings = load_settings()  # a bad AUSCULT_* variable: one line, exit status 2
    _check_default_model(settings)
    _check_port(args.host, args.port)
    workers = settings.workers or available_cpus()
    if workers > 1:
        # before anything imports prometheus_client: it picks its mode on import
        from service.serving.workers import prepare_multiprocess_metrics, serve_workers

        prepare_multiprocess_metrics()
        try:
            status = serve_workers(
                settings, args.host, args.port, workers, _uvicorn_kwargs(settings)
            )
        except OSError as e:  # the port was taken since _check_port
            _bind_failed(args.host, args.port, e)
        raise SystemExit(status)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # one process: plain metrics

    import uvicorn

    from service.app import create_app

    uvicorn.run(create_app(settings), host=args.host, port=args.port, **_uvicorn_kwargs(settings))


def _check_default_model(settings: Settings) -> None:
    """AUSCULT_DEFAULT_MODEL must name a bundle folder: one line and exit status 2, not a
    traceback from every worker's start-up."""
    name = settings.default_model
    if not name or (not name.startswith(".") and (settings.artifacts_dir / name).is_dir()):
        return
    there = sorted(
        p.name
        for p in settings.artifacts_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    print(
        f"auscult: bad setting: AUSCULT_DEFAULT_MODEL={name!r} is not a bundle folder in "
        f"{settings.artifacts_dir} (there: {', '.join(there) or 'none'})",
        file=sys.stderr,
    )
    raise SystemExit(2)


def _check_port(host: str, port: int) -> None:
    from service.serving.workers import claim_port

    try:
        claim_port(host, port)
    except OSError as e:
        _bind_failed(host, port, e)


def _bind_failed(host: str, port: int, error: OSError) -> NoReturn:
    from service.serving.workers import describe_bind_error

    print(describe_bind_error(host, port, error), file=sys.stderr)
    raise SystemExit(1)


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
