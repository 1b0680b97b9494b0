"""Pose models made in a test, offline: an ONNX model with RTMPose's (RTMW, DWPose)
input and output signature, loaded by rtmlib as a downloaded one would be."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hemo_jax.contract.keypoint_layout import BODY, BODY_25_NAMES

INPUT_W, INPUT_H = 48, 64  # a small input of RTMW's 3:4 shape; SimCC bins are 2 per pixel
NOSE, LEFT_WRIST, LEFT_HAND_START = 0, 9, 91
BODY_AT = {name: BODY.start + i for i, name in enumerate(BODY_25_NAMES)}


def simcc_model(path, batch="batch", peaks=None, input_size=(INPUT_W, INPUT_H)):
    """An ONNX model with RTMPose's signature: ``input`` [N, 3, H, W] float32 →
    ``simcc_x`` [N, 133, 2W], ``simcc_y`` [N, 133, 2H]. Each keypoint's SimCC row peaks at a
    fixed bin; its height is ``peaks`` plus 1e-3 × the image's mean, so each image in a
    batch gets its own confidences."""
    width, height = input_size
    rng = np.random.default_rng(0)
    k = 133
    sx = rng.uniform(0.0, 0.05, (1, k, 2 * width)).astype(np.float32)
    sy = rng.uniform(0.0, 0.05, (1, k, 2 * height)).astype(np.float32)
    bins_x = rng.integers(0, 2 * width, k)
    bins_y = rng.integers(0, 2 * height, k)
    bins_x[NOSE], bins_y[NOSE] = width, height  # the nose at the crop's centre
    bins_x[LEFT_WRIST], bins_y[LEFT_WRIST] = 0, 0  # the left wrist at its top-left corner
    peaks = rng.uniform(0.3, 0.9, k) if peaks is None else peaks
    sx[0, np.arange(k), bins_x] = peaks
    sy[0, np.arange(k), bins_y] = peaks
    unsure = peaks <= 0  # a row that never rises above 0: rtmlib's "not found"
    sx[0, unsure], sy[0, unsure] = peaks[unsure, None], peaks[unsure, None]
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),
        helper.make_node("Mul", ["mean3", "alpha"], ["shift"]),
        helper.make_node("Add", ["shift", "cx"], ["simcc_x"]),
        helper.make_node("Add", ["shift", "cy"], ["simcc_y"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array(1e-3, np.float32), "alpha"),
        numpy_helper.from_array(sx, "cx"),
        numpy_helper.from_array(sy, "cy"),
    ]
    graph = helper.make_graph(
        nodes,
        "simcc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [batch, k, 2 * width]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [batch, k, 2 * height]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return str(path)
