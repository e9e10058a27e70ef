"""The embedded LAION-Face-shaped corpus: parametric faces, their photos and line drawings, noisy rows.

Needs no download: everything is generated from a seed. See :class:`EmbeddedCorpus`.
"""

from fvlp_core.corpus.faces import (
    STROKE_GROUPS,
    FaceParams,
    Stroke,
    attributes_of,
    crop_strokes,
    face_strokes,
    render_face,
    sample_identity,
)
from fvlp_core.corpus.laion import NOISE_LABELS, EmbeddedCorpus

__all__ = [
    "STROKE_GROUPS",
    "NOISE_LABELS",
    "EmbeddedCorpus",
    "FaceParams",
    "Stroke",
    "attributes_of",
    "crop_strokes",
    "face_strokes",
    "render_face",
    "sample_identity",
]
