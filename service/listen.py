"""`python -m service.listen ws://HOST:PORT/v1/models/NAME/listen [FILE | -]`: stream a
recording to a running service and print each window's score as it comes back.

FILE is an audio file (wav, flac, ogg; a 16-bit PCM wav is sent as its own samples);
`-` (or nothing) reads raw little-endian PCM from standard input, described by --rate,
--channels and --format, e.g. from a sound card:

    arecord -f S16_LE -r 16000 -c 1 -t raw | python -m service.listen ws://HOST:8000/v1/models/gearbox/listen

One line per window (start-end, score, the level so far), then the summary. The key, when
the service wants one, comes from --key or AUSCULT_API_KEY (sent as X-API-Key). Exit
status: 0 after the summary, 1 on an error message from the service or a lost connection,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import wave
from collections.abc import Iterator
from typing import Any, BinaryIO

FORMATS = {"pcm_s16le": 2, "f32le": 4}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service.listen",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("url", help="ws://HOST:PORT/v1/models/NAME/listen")
    parser.add_argument("source", nargs="?", default="-", help="an audio file, or - for stdin")
    parser.add_argument("--rate", type=int, help="standard input: samples per second")
    parser.add_argument("--channels", type=int, default=1, help="standard input: channels")
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="pcm_s16le", help="standard input: samples"
    )
    parser.add_argument("--condition", help="the operating condition (one of the model's)")
    parser.add_argument("--key", help="API key (default: $AUSCULT_API_KEY)")
    parser.add_argument(
        "--chunk-ms", type=float, default=100.0, help="milliseconds of audio per frame sent"
    )
    parser.add_argument(
        "--realtime", action="store_true", help="a file: send it at its own pace, not at once"
    )
    parser.add_argument("--json", action="store_true", help="print the server's messages as JSON")
    return parser


def open_source(args: argparse.Namespace) -> tuple[dict[str, Any], Iterator[bytes]]:
    """The start message's audio description and the frames to send."""
    if args.source == "-":
        if not args.rate:
            raise SystemExit("python -m service.listen: standard input needs --rate")
        width = FORMATS[args.format] * args.channels
        size = max(1, round(args.rate * args.chunk_ms / 1000)) * width
        fmt = {"sample_rate": args.rate, "channels": args.channels, "format": args.format}
        return fmt, _read_stream(sys.stdin.buffer, size)
    try:
        with wave.open(args.source, "rb") as w:
            if w.getsampwidth() == 2 and w.getcomptype() == "NONE":
                rate, channels = w.getframerate(), w.getnchannels()
                data = w.readframes(w.getnframes())
                fmt = {"sample_rate": rate, "channels": channels, "format": "pcm_s16le"}
                return fmt, _chunks(data, rate, channels * 2, args.chunk_ms)
    except (wave.Error, EOFError):
        pass  # not a plain 16-bit wav: soundfile reads it as float
    except OSError as e:
        raise SystemExit(f"python -m service.listen: cannot read {args.source}: {e}") from None
    import numpy as np
    import soundfile as sf

    try:
        samples, rate = sf.read(args.source, dtype="float32", always_2d=True)
    except Exception as e:
        raise SystemExit(f"python -m service.listen: cannot read {args.source}: {e}") from None
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    channels = samples.shape[1]
    fmt = {"sample_rate": int(rate), "channels": channels, "format": "f32le"}
    return fmt, _chunks(data, int(rate), channels * 4, args.chunk_ms)


def _chunks(data: bytes, rate: int, frame_bytes: int, chunk_ms: float) -> Iterator[bytes]:
    size = max(1, round(rate * chunk_ms / 1000)) * frame_bytes
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _read_stream(stream: BinaryIO, size: int) -> Iterator[bytes]:
    """Frames of `size` bytes from a pipe (the last one shorter), whole samples only."""
    pending = b""
    while True:
        block = stream.read(size - len(pending))
        if not block:
            break
        pending += block
        if len(pending) >= size:
            yield pending
            pending = b""
    if pending:
        yield pending


def format_window(m: dict[str, Any]) -> str:
    worst = m.get("worst") or {}
    return (
        f"{m['start_s']:8.3f}-{m['end_s']:8.3f} s  score {m['score']:7.3f}  "
        f"{m['level']:<17}  worst {worst.get('score', float('nan')):.3f} "
        f"({worst.get('start_s', 0):.1f}-{worst.get('end_s', 0):.1f} s)"
    )


def format_summary(m: dict[str, Any]) -> str:
    seconds = (m.get("input") or {}).get("duration_s")
    if m.get("score") is None:
        return f"summary: {seconds} s heard, too short for a window ({m.get('ended')})"
    worst = m.get("worst") or {}
    return (
        f"summary: {m['level']}  score {m['score']:.3f} over {len(m.get('windows') or [])} "
        f"windows ({seconds} s); worst {worst.get('start_s')}-{worst.get('end_s')} s; "
        f"ended: {m.get('ended')}"
    )


def _send(
    ws: Any, start: dict[str, Any], frames: Iterator[bytes], args: argparse.Namespace, pace: int
) -> None:
    """The start message, every frame (at the recording's own pace with --realtime), stop."""
    from websockets.exceptions import ConnectionClosed

    began, sent = time.monotonic(), 0
    try:
        ws.send(json.dumps(start))
        for frame in frames:
            ws.send(frame)
            sent += len(frame)
            if args.realtime and args.source != "-":
                time.sleep(max(0.0, began + sent / pace - time.monotonic()))
        ws.send(json.dumps({"type": "stop"}))
    except ConnectionClosed:
        pass  # the server ended the stream: its last message says why


def _show(m: dict[str, Any], as_json: bool, status: int) -> int:
    """Print one server message; the exit status so far (0 once the summary came)."""
    kind = m.get("type")
    if as_json:
        print(json.dumps(m), flush=True)
    elif kind == "window":
        print(format_window(m), flush=True)
    elif kind == "summary":
        print(format_summary(m), flush=True)
    if kind == "error":
        err = m.get("error", {})
        print(f"error: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    return 0 if kind == "summary" else status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    fmt, frames = open_source(args)
    key = args.key or os.environ.get("AUSCULT_API_KEY")
    headers = {"X-API-Key": key} if key else None
    start = {"type": "start", **fmt}
    if args.condition:
        start["condition"] = args.condition
    pace = fmt["sample_rate"] * FORMATS[fmt["format"]] * fmt["channels"]
    try:
        ws = connect(args.url, additional_headers=headers, max_size=None, open_timeout=10)
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as e:
        print(f"python -m service.listen: cannot connect to {args.url}: {e}", file=sys.stderr)
        return 1
    with ws:
        sender = threading.Thread(target=_send, args=(ws, start, frames, args, pace), daemon=True)
        sender.start()
        status = 1
        try:
            for raw in ws:
                status = _show(json.loads(raw), args.json, status)
        except ConnectionClosed as e:
            if status != 0:
                print(f"python -m service.listen: connection closed: {e}", file=sys.stderr)
        except KeyboardInterrupt:
            status = 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
