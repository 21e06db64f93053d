"""What one file may cost (kept apart from the Ray and Arrow code: the command line reads
the defaults before it knows whether the bulk extra is installed)."""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import Settings


@dataclass(frozen=True)
class Limits:
    """What one file may cost; the defaults are the service's (service/settings.py), so a
    file refused there is refused here with the same code."""

    max_seconds: float
    min_sample_rate: int
    max_sample_rate: int
    max_samples: int  # decoded plus resampled samples of one file

    @classmethod
    def service_defaults(cls) -> Limits:
        f = Settings.model_fields
        return cls(
            max_seconds=f["max_audio_seconds"].default,
            min_sample_rate=f["min_sample_rate"].default,
            max_sample_rate=f["max_sample_rate"].default,
            max_samples=f["max_request_samples"].default,
        )
