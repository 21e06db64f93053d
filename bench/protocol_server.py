"""The service as `python -m service` runs it, on two ports of ONE process and event loop:

    python bench/protocol_server.py --port P --plain-port Q

P speaks service/serving/server.py's protocol (header limit, deadlines, connection cap), Q
uvicorn's plain httptools protocol; app, settings and every other uvicorn option are
the same. bench/serving.py alternates requests between them and reads the CPU time of
the one event-loop thread, so the difference is the protocol's alone (two processes
would differ by more than that in memory layout and scheduling).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import uvicorn  # noqa: E402

from service.app import create_app  # noqa: E402  (tunes the process, as python -m service)
from service.serving.server import uvicorn_options  # noqa: E402
from service.settings import Settings  # noqa: E402


async def serve(port: int, plain_port: int) -> None:
    settings = Settings()
    app = create_app(settings)
    options = uvicorn_options(settings)
    common = dict(host="127.0.0.1", log_level=settings.log_level, access_log=False, **options)
    limited = uvicorn.Server(uvicorn.Config(app, port=port, lifespan="on", **common))
    common["http"] = "httptools"
    plain = uvicorn.Server(uvicorn.Config(app, port=plain_port, lifespan="off", **common))
    # the plain server shares the app (and its lifespan) and stops with the limited one,
    # which owns the signal handlers
    task = asyncio.create_task(plain._serve())
    try:
        await limited.serve()
    finally:
        plain.should_exit = True
        await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the limited protocol")
    parser.add_argument("--plain-port", type=int, required=True, help="plain httptools")
    args = parser.parse_args(argv)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, args.plain_port))


if __name__ == "__main__":
    main()
