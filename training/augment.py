"""Lossy-codec copies of training clips, so the normal distribution includes what codecs do.

Users send mp3 and ogg as well as wav. A codec's psychoacoustic model removes sound it
judges masked (a noise floor between strong harmonics, the top of the spectrum), which moves
a band's level by tens of dB: far outside the spread of healthy wav recordings, so a
healthy mp3 would score as an anomaly. Fitting on a codec round trip of each training clip
beside the original teaches the detector that those changes are normal.
"""

from __future__ import annotations

import io
from pathlib import Path

from service.features import FeatureParams, Prepared, decode_audio, prepare

# (soundfile format, subtype, compression level): Vorbis at libsndfile's default quality,
# MP3 at constant ~128 and ~64 kbit/s (libsndfile maps the level linearly onto the bitrates
# the sample rate allows; 0.2 and 0.6 give those at 16 kHz).
CODECS: dict[str, tuple[str, str, float | None]] = {
    "ogg": ("OGG", "VORBIS", None),
    "mp3-128": ("MP3", "MPEG_LAYER_III", 0.2),
    "mp3-64": ("MP3", "MPEG_LAYER_III", 0.6),
}
CYCLE = ("ogg", "mp3-128", "ogg", "mp3-64")


def round_trip(data: bytes, codec: str) -> bytes:
    """Audio file bytes → the same audio encoded with `codec` (a CODECS key)."""
    import soundfile as sf

    fmt, subtype, level = CODECS[codec]
    audio = decode_audio(data)
    kwargs: dict[str, object] = {}
    if level is not None:
        kwargs = {"compression_level": level, "bitrate_mode": "CONSTANT"}
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format=fmt, subtype=subtype, **kwargs)
    return buf.getvalue()


def codec_copy(path: Path, index: int, params: FeatureParams) -> Prepared:
    """Model input of a codec round trip of the clip at path; the codec cycles with index."""
    return prepare(round_trip(Path(path).read_bytes(), CYCLE[index % len(CYCLE)]), params)
