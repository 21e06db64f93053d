"""A fit job's fit as a Ray task (`python -m training worker --ray ADDRESS`).

The task gets the job's pieces as bytes (so the node needs no shared folder), fits in a
temporary folder of its own, and returns the bundle's files; the trainer writes and
publishes them as for a local fit. Progress travels through a small actor the trainer
drains: the same stages, epochs and percentages as a local fit. A cancelled job cancels
its task.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from training.fit_job import Cancelled, Progress, run_fit

DATA, OUT = "{data}", "{out}"
POLL_S = 0.5


def _connect(address: str) -> Any:
    import ray

    if not ray.is_initialized():
        ray.init(
            address=None if address == "local" else address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray


def run_on_ray(
    address: str, argv: list[str], data_dir: Path, bundle: Path, progress: Progress
) -> None:
    """Run `fit argv` as a Ray task; the bundle's files land in `bundle` (a new folder)."""
    ray = _connect(address)
    relay = ray.remote(num_cpus=0)(Relay).remote()
    template = [DATA if a == str(data_dir) else OUT if a == str(bundle) else a for a in argv]
    files = {p.name: p.read_bytes() for p in sorted(data_dir.iterdir()) if p.is_file()}
    task = ray.remote(max_retries=0)(fit_task)
    ref = task.remote(template, files, bundle.name, relay)
    try:
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_S)
            for kind, payload in ray.get(relay.drain.remote()):
                if kind == "stage":
                    progress.stage(payload)
                else:
                    progress.epoch(*payload)
            if progress.cancelled():
                raise Cancelled()
            if ready:
                break
        result: dict[str, bytes] = ray.get(ref)
    except Cancelled:
        ray.get(relay.cancel.remote())
        ray.cancel(ref, force=True)
        raise
    bundle.mkdir(parents=True)
    for name, data in result.items():
        (bundle / name).write_bytes(data)


class Relay:
    """Progress events from the task to the trainer, and the cancel flag back."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.stop = False

    def push(self, kind: str, payload: Any) -> None:
        self.events.append((kind, payload))

    def drain(self) -> list[tuple[str, Any]]:
        events, self.events = self.events, []
        return events

    def cancel(self) -> None:
        self.stop = True

    def cancelled(self) -> bool:
        return self.stop


def fit_task(
    template: list[str], files: dict[str, bytes], name: str, relay: Any
) -> dict[str, bytes]:
    """On a Ray worker: the pieces written to a temporary folder, the fit run there into a
    folder named `name` (the manifest's name is its folder's), the bundle's files returned
    by file name."""
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "bundle" / name
        data.mkdir()
        for name, blob in files.items():
            (data / name).write_bytes(blob)
        argv = [str(data) if a == DATA else str(out) if a == OUT else a for a in template]

        def cancelled() -> bool:
            return bool(ray.get(relay.cancelled.remote()))

        progress = Progress(lambda **_: None, lambda _: None, cancelled)
        stage, epoch = progress.stage, progress.epoch

        def on_stage(text: str) -> None:
            relay.push.remote("stage", text)
            stage(text)

        def on_epoch(done: int, epochs: int, logs: dict[str, float]) -> None:
            relay.push.remote("epoch", (done, epochs, logs))
            epoch(done, epochs, logs)

        progress.stage, progress.epoch = on_stage, on_epoch  # type: ignore[method-assign]
        run_fit(argv, progress)
        return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
