"""Bench-only: the seed-style stack auscult replaces, rebuilt around an auscult bundle.

`python bench/seed_stack.py --bundle artifacts/gearbox --port 8100` serves
`POST /analyze` (multipart field `file`) with Flask's threaded development
server, the way the seed did:

- each upload is saved to a temporary file and read back with
  `librosa.load(sr=22050)`;
- 128-band mel spectrogram (fmax 8000) → dB (ref = max) → min-max to 0..255
  (uint8) → 224x224 picture;
- the Keras autoencoder from the bundle (`autoencoder.keras`) is loaded, the
  encoder rebuilt from its layers (`keras.Model(m.input, m.get_layer(...).output)`,
  via `training.anomaly.autoencoder.scoring_encoder`), and `model.predict` is called once
  per request;
- PCA + Mahalanobis with the bundle's arrays.

Adaptation (documented in docs/archive/experiments.md): the seed's encoder took 224x224
inputs; the bundle's encoder takes (height, width) from its manifest, so the
224x224 picture is resized once more to (height, width) and scaled to [0, 1]
before `predict`. The score is therefore not comparable with auscult's; the
cost of every step is. Not part of the service; never imported by it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def create_app(bundle_dir: Path):  # type: ignore[no-untyped-def]
    import librosa
    import numpy as np
    from flask import Flask, jsonify, request
    from PIL import Image

    from training.anomaly.autoencoder import load_autoencoder, scoring_encoder_for

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    height, width = manifest["features"]["height"], manifest["features"]["width"]
    autoencoder = load_autoencoder(bundle_dir / "autoencoder.keras")
    # the seed's `keras.Model(m.input, m.get_layer(...).output)`, for this bundle's encoder design
    encoder = scoring_encoder_for(autoencoder, manifest["training"]["autoencoder"])
    arrays = {
        k: np.load(bundle_dir / f"{k}.npy")
        for k in ("pca_components", "pca_mean", "mean_vec", "inv_cov")
    }

    app = Flask("seed_stack")

    @app.get("/readyz")
    def readyz():  # type: ignore[no-untyped-def]
        return jsonify(status="ready")

    @app.post("/analyze")
    def analyze():  # type: ignore[no-untyped-def]
        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="no file"), 400
        fd, path = tempfile.mkstemp(suffix=".wav")
        os.close(fd)
        try:
            upload.save(path)
            y, sr = librosa.load(path, sr=22050)
        finally:
            os.unlink(path)
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_mels=128, fmax=8000)
        db = librosa.power_to_db(mel, ref=np.max)
        pixels = ((db - db.min()) / (db.max() - db.min() + 1e-12) * 255).astype(np.uint8)
        picture = Image.fromarray(pixels).resize((224, 224))
        picture = picture.resize((width, height))  # the adaptation: the bundle's input size
        x = np.asarray(picture, dtype=np.float32)[None, :, :, None] / 255.0
        latent = encoder.predict(x, verbose=0)
        z = (latent - arrays["pca_mean"]) @ arrays["pca_components"].T - arrays["mean_vec"]
        score = float(np.sqrt(max(float(z[0] @ arrays["inv_cov"] @ z[0]), 0.0)))
        return jsonify(score=score, filename=upload.filename)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    create_app(args.bundle).run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
