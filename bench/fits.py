"""Fit jobs: from the upload of healthy audio to a served model, while the service scores.

    .venv/bin/python bench/fits.py                 # 2 minutes of audio, the quick preset
    .venv/bin/python bench/fits.py --preset standard
    .venv/bin/python bench/fits.py --quick         # 20 s and a tiny network (the test's run)

The real service (`python -m service`, on a copy of the committed gearbox bundle, with a
jobs folder) and the real trainer (`python -m training worker`) run as subprocesses on
this machine. Healthy synthetic gearbox recordings (`training synth`, 10 s each) are POSTed
to /v1/fits; the job is polled until its model is served (GET says `served` and the new
model answers a score). Meanwhile one client scores a 10-s clip with the gearbox model
back to back (`--probe-pause` seconds apart): p50/p99 of that single-clip scoring before
the fit (`--baseline-s`) and during it say whether the service keeps answering.
Target (issue 27): upload → served ≤ 180 s with `quick` on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.serving import ORIGINAL_ENV, free_port, start_server, stop_server  # noqa: E402
from training.synth import recording  # noqa: E402

TARGET_S = 180.0
TINY = "--filters 4,8,8 --latent-dim 8 --n-mels 32 --max-components 16 --epochs 2"


def wav(x: np.ndarray, sr: int = 16000) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def healthy_clips(seconds: float, clip_seconds: float) -> list[bytes]:
    n = max(1, round(seconds / clip_seconds))
    return [wav(recording(seconds=clip_seconds, seed=100 + i)) for i in range(n)]


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    a = np.array(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


async def probe(
    client: httpx.AsyncClient,
    clip: bytes,
    pause: float,
    out: list[float],
    errors: list[str],
    stop: asyncio.Event,
) -> None:
    """Score `clip` with gearbox back to back (with `pause` between) until `stop`."""
    while not stop.is_set():
        t = time.perf_counter()
        try:
            r = await client.post(
                "/v1/models/gearbox/score", files={"file": ("probe.wav", clip, "audio/wav")}
            )
            if r.status_code == 200:
                out.append(time.perf_counter() - t)
            else:
                errors.append(f"{r.status_code} {r.text[:100]}")
        except httpx.HTTPError as e:
            errors.append(repr(e))
        await asyncio.sleep(pause)


async def run(args: argparse.Namespace, work: Path) -> dict:
    artifacts, jobs = work / "artifacts", work / "jobs"
    shutil.copytree(REPO / "artifacts" / "gearbox", artifacts / "gearbox")
    port = free_port()
    env = {
        **ORIGINAL_ENV,
        "PYTHONPATH": str(REPO),
        "AUSCULT_ARTIFACTS_DIR": str(artifacts),
        "AUSCULT_JOBS_DIR": str(jobs),
        "AUSCULT_LOG_LEVEL": "warning",
        "AUSCULT_FIT_MIN_SECONDS": str(min(30.0, args.seconds)),
    }
    if args.workers:
        env["AUSCULT_WORKERS"] = str(args.workers)
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    server = start_server("fits", cmd, env, port, timeout=90)
    trainer_log = open(work / "trainer.log", "wb")  # noqa: SIM115 - closed below
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "training",
            "worker",
            "--jobs",
            str(jobs),
            "--artifacts",
            str(artifacts),
            "--poll",
            "0.5",
            "--fit-args",
            args.fit_args,
        ],
        cwd=REPO,
        env={**ORIGINAL_ENV, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
        stdout=trainer_log,
        stderr=subprocess.STDOUT,
    )
    clips = healthy_clips(args.seconds, args.clip_seconds)
    probe_clip = wav(recording(seconds=10, seed=7))
    figures: dict = {"preset": args.preset, "audio_s": args.seconds, "clips": len(clips)}
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            stop = asyncio.Event()
            base: list[float] = []
            errors: list[str] = []
            task = asyncio.ensure_future(
                probe(client, probe_clip, args.probe_pause, base, errors, stop)
            )
            await asyncio.sleep(args.baseline_s)
            stop.set()
            await task
            figures["scoring_before"] = percentiles(base)

            during: list[float] = []
            stop = asyncio.Event()
            task = asyncio.ensure_future(
                probe(client, probe_clip, args.probe_pause, during, errors, stop)
            )
            t0 = time.perf_counter()
            files = [("files", (f"healthy_{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]
            r = await client.post(
                "/v1/fits", data={"name": "bench-pump", "preset": args.preset}, files=files
            )
            assert r.status_code == 202, r.text
            t_upload = time.perf_counter() - t0
            url = r.json()["url"]
            started = None
            while True:
                job = (await client.get(url)).json()
                if started is None and job["state"] == "running":
                    started = time.perf_counter() - t0
                if job["state"] not in ("queued", "running"):
                    break
                if time.perf_counter() - t0 > args.timeout:
                    raise TimeoutError(f"the job did not end within {args.timeout} s: {job}")
                await asyncio.sleep(0.25)
            if job["state"] != "succeeded":
                raise RuntimeError(f"the job {job['state']}: {job.get('error')}")
            while not (await client.get(url)).json()["model"]["served"]:
                await asyncio.sleep(0.1)
            scored = await client.post(
                "/v1/models/bench-pump/score", files={"file": ("a.wav", clips[0], "audio/wav")}
            )
            assert scored.status_code == 200, scored.text
            total = time.perf_counter() - t0
            stop.set()
            await task
            figures.update(
                upload_s=round(t_upload, 2),
                queued_s=round((started or 0.0) - t_upload, 2),
                fit_s=round(total - (started or 0.0), 1),
                upload_to_served_s=round(total, 1),
                target_s=TARGET_S,
                met=total <= TARGET_S,
                epochs=job["progress"]["epochs"],
                scoring_during=percentiles(during),
                scoring_errors=len(errors),
                error_samples=errors[:3],
            )
    finally:
        trainer.terminate()
        trainer.wait(30)
        trainer_log.close()
        stop_server(server)
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=["quick", "standard"], default="quick")
    p.add_argument("--seconds", type=float, default=120.0, help="healthy audio uploaded")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="length of each clip")
    p.add_argument("--fit-args", default="", help="more fit options for the trainer")
    p.add_argument("--workers", type=int, default=None, help="AUSCULT_WORKERS (default: CPUs)")
    p.add_argument("--baseline-s", type=float, default=10.0, help="scoring before the fit")
    p.add_argument("--probe-pause", type=float, default=0.2, help="seconds between probes")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--quick", action="store_true", help="20 s of audio, a tiny network")
    p.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.clip_seconds, args.baseline_s = 20.0, 5.0, 3.0
        args.fit_args = f"{TINY} {args.fit_args}".strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before: {load:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fits-") as tmp:
        figures = asyncio.run(run(args, Path(tmp)))
    figures["load_average_before"] = round(load, 2)
    for k, v in figures.items():
        print(f"{k:>22}: {v}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
