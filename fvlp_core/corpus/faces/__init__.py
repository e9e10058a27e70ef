"""A parametric face model, a photo-like renderer and the matching line drawing.

One :class:`FaceParams` is one identity (:mod:`.identity`). Its geometry (:mod:`.geometry`)
is a set of polylines in *face units* (x right, y down, origin at the centre of the face
oval, half face width about 1). The renderer (:mod:`.drawing`) fills those outlines with
shaded skin, hair, eyes and clothes; :func:`face_strokes` (:mod:`.strokes`) draws the same
outlines as pen strokes, so a sketch and the un-jittered photo of one identity line up
pixel for pixel.
"""

from fvlp_core.corpus.faces.drawing import (
    Canvas,
    Lighting,
    background,
    draw_face,
    photo_outfit,
    random_lighting,
    render_face,
)
from fvlp_core.corpus.faces.geometry import Placement, default_placement, face_geometry, jitter_placement
from fvlp_core.corpus.faces.identity import FaceParams, attributes_of, sample_identity
from fvlp_core.corpus.faces.strokes import STROKE_GROUPS, Stroke, crop_strokes, face_strokes

__all__ = [
    "STROKE_GROUPS",
    "Canvas",
    "FaceParams",
    "Lighting",
    "Placement",
    "Stroke",
    "attributes_of",
    "background",
    "crop_strokes",
    "default_placement",
    "draw_face",
    "face_geometry",
    "face_strokes",
    "jitter_placement",
    "photo_outfit",
    "random_lighting",
    "render_face",
    "sample_identity",
]
