"""training.export: tf2onnx's Min/Max of a tensor and a constant become ONNX Clip nodes
with the same values (onnxruntime's broadcasting Min/Max cost more than the convolutions)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from service.models.bundle import read_manifest, verify_files
from tests.conftest import ARTIFACTS
from training.export import clips_as_clip


def _clip_graph() -> bytes:
    """x → Max(x, 0) → Min(·, 1) → Max(·, y): the last one has no constant and stays."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4])
    zero = numpy_helper.from_array(np.array([0.0], np.float32), "zero")
    nodes = [
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.float32(1.0))),
        helper.make_node("Max", ["x", "zero"], ["low"], name="low"),
        helper.make_node("Min", ["one", "low"], ["high"], name="high"),
        helper.make_node("Max", ["high", "y"], ["out"], name="pair"),
    ]
    graph = helper.make_graph(nodes, "clip", [x, y], [out], initializer=[zero])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_min_max_with_constants_become_clip_with_the_same_values() -> None:
    before = _clip_graph()
    after = clips_as_clip(before)
    ops = [n.op_type for n in onnx.load_from_string(after).graph.node]
    assert ops == ["Constant", "Clip", "Clip", "Max"]
    onnx.checker.check_model(onnx.load_from_string(after), full_check=True)
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.normal(0.5, 1.0, (64, 4)).astype(np.float32),
        "y": rng.normal(0.0, 0.3, (64, 4)).astype(np.float32),
    }
    got = [ort.InferenceSession(b).run(None, feeds)[0] for b in (before, after)]
    np.testing.assert_array_equal(got[0], got[1])
    assert got[1].min() >= -0.9 and (got[1] == 1.0).any()


def test_the_committed_encoder_has_no_broadcasting_min_max() -> None:
    gearbox = ARTIFACTS / "gearbox"
    verify_files(gearbox, read_manifest(gearbox))  # the rewritten graphs are the manifest's
    for name in ("encoder.onnx", "autoencoder.onnx"):
        ops = {n.op_type for n in onnx.load(ARTIFACTS / "gearbox" / name).graph.node}
        assert not ops & {"Min", "Max"}, name
