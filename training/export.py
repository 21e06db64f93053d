"""Export Keras models to ONNX with tf2onnx (dynamic batch axis)."""

from __future__ import annotations

from typing import Any

import numpy as np

OPSET = 17


def to_onnx(model: Any, input_name: str, output_name: str) -> bytes:
    """keras.Model with one (b, h, w, 1) input → serialized ONNX with named tensors."""
    import tensorflow as tf
    import tf2onnx

    shape = (None, *(int(s) for s in model.inputs[0].shape[1:]))
    spec = (tf.TensorSpec(shape, tf.float32, name=input_name),)

    @tf.function(input_signature=spec)
    def forward(x: Any) -> dict[str, Any]:
        return {output_name: model(x, training=False)}

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def onnx_run(onnx_bytes: bytes, batch: np.ndarray) -> np.ndarray:
    """Run the first output of an ONNX model on a batch (for parity checks)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: batch.astype(np.float32)})[0]
