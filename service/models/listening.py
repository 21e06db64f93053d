"""Live listening: raw PCM arriving in pieces → each window's score as it completes → the
recording's verdict at the end, the same numbers as scoring the recording as a file.

`ListenSession` knows nothing of WebSockets: `features(data)` turns one binary frame into
the windows it completes (model inputs and spans, `MelStream`), the caller runs the model
on them (`runtime.score`, through the scorer's micro-batcher), `windows(raw, spans)` turns
the raw scores into the per-window messages, and `summary(reason)` ends the stream.

A window's `score` is the file endpoint's `windows[i].score`: every window is scored on its
own, in the reference condition's units under the stream's condition. With a named
condition (or a model of one) that is final at once; otherwise the condition is the
nearest to the windows heard so far, as the file endpoint chooses it for the whole
recording, and each message says which; the summary gives every window's score under the
final choice, exactly the file endpoint's `windows`. The level and worst stretch in a
window message are the verdict of the recording so far, as if it ended with that window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.features import MelStream, decode_pcm
from service.models.runtimes import AnomalyRuntime
from service.models.scoring import score_result
from service.models.verdict import Verdict
from service.schemas import InputInfo, ListenStart, ThresholdValues

STREAM_FORMAT = "pcm"  # judged as lossless audio: raw PCM went through no codec


class ListenSession:
    """One stream's state: the feature stream, the raw window scores so far (n, …) and
    their spans."""

    def __init__(self, runtime: AnomalyRuntime, start: ListenStart) -> None:
        m = runtime.manifest
        assert m is not None and m.thresholds is not None
        self.runtime, self.start = runtime, start
        self.mel = MelStream(start.sample_rate, m.features)
        self.raw: list[np.ndarray] = []  # one block of raw window scores per model run
        self.spans: list[tuple[float, float]] = []
        self.thresholds = ThresholdValues(
            needs_maintenance=m.thresholds.needs_maintenance, severe=m.thresholds.severe
        )
        self.bytes_in = 0

    def features(self, data: bytes) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """One binary frame → the windows it completes: ((k, height, width), spans).
        Raises InvalidAudio (not whole sample frames) or NonFiniteValues."""
        self.bytes_in += len(data)
        samples = decode_pcm(data, self.start.format, self.start.channels)
        return self.mel.push(samples)

    def finish(self) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The last windows (those touching the end); raises AudioTooShort for a stream
        shorter than the model's minimum."""
        return self.mel.finish()

    @property
    def windows_scored(self) -> int:
        return len(self.spans)

    def verdict(self) -> Verdict:
        """The verdict of the recording so far (at least one window scored)."""
        raw = np.concatenate(self.raw)
        return self.runtime.verdict(
            raw, self.start.condition, STREAM_FORMAT, False, self.mel.bandwidth_hz
        )

    def windows(self, raw: np.ndarray, spans: list[tuple[float, float]]) -> list[dict[str, Any]]:
        """Raw scores (k, …) of the windows just completed → one message each."""
        if len(spans) == 0:
            return []
        first = len(self.spans)
        self.raw.append(raw)
        self.spans.extend(spans)
        v = self.verdict()
        out = []
        for i, (start_s, end_s) in enumerate(spans, first):
            # the verdict of the recording up to this window (a block of several windows
            # reports each one's own, as if the stream had ended there)
            upto = v if i == len(self.spans) - 1 else self._verdict_upto(i + 1)
            out.append(
                {
                    "type": "window",
                    "index": i,
                    "start_s": round(start_s, 3),
                    "end_s": round(end_s, 3),
                    "score": float(v.window_scores[i]),
                    "level": upto.level,
                    "clip_score": upto.score,
                    "worst": self._worst(upto),
                    "condition": v.condition,
                }
            )
        return out

    def _verdict_upto(self, n: int) -> Verdict:
        raw = np.concatenate(self.raw)[:n]
        return self.runtime.verdict(
            raw, self.start.condition, STREAM_FORMAT, False, self.mel.bandwidth_hz
        )

    def _worst(self, v: Verdict) -> dict[str, float]:
        first, last = v.worst
        return {
            "start_s": round(self.spans[first][0], 3),
            "end_s": round(self.spans[last][1], 3),
            "score": float(v.window_scores[first : last + 1].mean()),
        }

    def summary(self, ended: str) -> dict[str, Any]:
        """The closing message: the file endpoint's ScoreResult for the recording heard
        (every window, under the final condition), `ended` saying why it ended, or a
        summary without a verdict when no window was scored."""
        info = InputInfo(
            kind="audio",
            format=self.start.format,
            duration_s=round(self.mel.duration_s, 4),
            sample_rate=self.start.sample_rate,
            channels=self.start.channels,
            bandwidth_hz=None if self.mel.bandwidth_hz is None else round(self.mel.bandwidth_hz),
        )
        m = self.runtime.manifest
        assert m is not None
        if not self.spans:
            return {
                "type": "summary",
                "ended": ended,
                "model": self.runtime.name,
                "model_version": m.version,
                "score": None,
                "level": None,
                "thresholds": self.thresholds.model_dump(),
                "input": info.model_dump(),
                "windows": [],
            }
        result = score_result(self.runtime, self.verdict(), self.thresholds, info, None, self.spans)
        body = result.model_dump(exclude={"filename"})
        return {"type": "summary", "ended": ended, **body}
