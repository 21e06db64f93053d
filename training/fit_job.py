"""What a fit job's fit reports while it runs, and the fit itself: `python -m training fit`
with the job's command line, its stages and epochs turned into the job's progress (for a
fit in the trainer's process or in a Ray task alike)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# share of the job's progress where each stage of the fit starts (the autoencoder's
# epochs fill the span from "training" to "exporting")
STAGE_PERCENT = {
    "preparing": 1,
    "features": 5,
    "training": 15,
    "exporting": 70,
    "encoding": 72,
    "fitting": 75,
    "calibrating": 78,
    "refitting": 92,
    "writing": 95,
    "publishing": 98,
}


class Cancelled(Exception):
    """The job's cancel flag was seen between two steps of the fit."""


@dataclass
class Progress:
    """What the fit reports, turned into state.json updates (a local fit writes them at
    once; a Ray task's are relayed by the trainer)."""

    write: Callable[..., None]  # (**state fields) → merged into state.json
    log_line: Callable[[str], None]
    cancelled: Callable[[], bool]
    percent: float = 0.0
    epochs: int | None = None
    last: dict[str, Any] = field(default_factory=dict)

    def stage(self, text: str) -> None:
        if self.cancelled():
            raise Cancelled()
        first = text.split()[0]
        self.percent = max(self.percent, STAGE_PERCENT.get(first, self.percent))
        self.log_line(text)
        self.write(stage=text, progress=self._progress(None))

    def epoch(self, done: int, epochs: int, logs: dict[str, float]) -> None:
        self.epochs = epochs
        lo, hi = STAGE_PERCENT["training"], STAGE_PERCENT["exporting"]
        self.percent = lo + (hi - lo) * done / max(epochs, 1)
        loss = " ".join(f"{k} {v:.4g}" for k, v in logs.items())
        self.log_line(f"epoch {done}/{epochs}: {loss}")
        self.write(stage=f"training: epoch {done} of {epochs}", progress=self._progress(done))
        if self.cancelled():
            raise Cancelled()

    def _progress(self, epoch: int | None) -> dict[str, Any]:
        if epoch is not None:
            self.last["epoch"] = epoch
        return {
            "epoch": self.last.get("epoch"),
            "epochs": self.epochs,
            "percent": round(self.percent, 1),
        }


def run_fit(argv: list[str], progress: Progress) -> Any:
    """The fit of `argv` (as parsed by `python -m training fit`), reporting to `progress`."""
    from training import import_tensorflow_quietly
    from training.cli import build_parser, fit_kwargs

    args = build_parser().parse_args(argv)
    progress.epochs = args.epochs
    import_tensorflow_quietly()
    from threadpoolctl import threadpool_limits

    from training.anomaly.fit import FitHooks, fit

    # one BLAS thread: beside a busy service, OpenBLAS's spinning threads made the
    # detector's SVDs 60x slower (4.2 s instead of 0.07 s for 228 x 2048 at load 12 on
    # 2 cores), and the service's own threads lost the cores they spun on
    with threadpool_limits(limits=1, user_api="blas"):
        return fit(
            args.data,
            args.out,
            run_evaluation=False,
            hooks=FitHooks(stage=progress.stage, epoch=progress.epoch),
            **fit_kwargs(args),
        )
