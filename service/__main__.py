"""`python -m service [--host 127.0.0.1] [--port 8000]`: run the API with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from service.app import create_app  # tunes the process on import (service/process.py)
from service.server import uvicorn_options
from service.settings import load_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    settings = load_settings()  # a bad AUSCULT_* variable: one line, exit status 2
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own JSON access lines
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),  # connection, header and timeout limits
    )


if __name__ == "__main__":
    main()
