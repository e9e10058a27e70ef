"""Detectors on insightface's shipped real photos, crops, and decoding of hostile image bytes."""

from __future__ import annotations

import numpy as np
import pytest

from fvlp_core.codec import decode_image
from fvlp_core.detection.backends import Detections, DetectorSpec, detector_for
from fvlp_core.detection.crop import crop_face, laplacian_variance
from fvlp_core.detection.images import ImageRejected, decode_rgb
from fvlp_core.detection.measure import ImageParams, measure_image, perceptual_hash
from tests.clean_fixtures import GROUP_PHOTO, PORTRAIT, bad_images, png_bomb, portrait_variants

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def retinaface():
    return detector_for(DetectorSpec("retinaface"))


def test_offline_detector_finds_every_face_of_the_group_photo(retinaface):
    found = retinaface.detect(decode_rgb(GROUP_PHOTO.read_bytes(), MAX_PIXELS))
    assert len(found) >= 5
    assert found.landmarks is not None and found.landmarks.shape == (len(found), 5, 2)
    assert np.all(found.scores[:-1] >= found.scores[1:])  # best first
    x1, y1, x2, y2 = found.boxes.T
    assert np.all(x2 > x1) and np.all(y2 > y1) and np.all(x2 <= 1280 + 5) and np.all(y2 <= 886 + 5)


def test_offline_detector_finds_the_one_face_of_the_portrait(retinaface):
    rgb = decode_rgb(PORTRAIT.read_bytes(), MAX_PIXELS)
    found = retinaface.detect(rgb)
    assert len(found) == 1 and found.scores[0] > 0.9
    left_eye, right_eye, nose, mouth_left, mouth_right = found.landmarks[0]
    assert left_eye[0] < right_eye[0] and nose[1] > left_eye[1] and mouth_left[1] > nose[1]


def test_large_images_are_detected_at_reduced_size_in_original_coordinates(retinaface):
    rgb = decode_rgb(GROUP_PHOTO.read_bytes(), MAX_PIXELS)
    small = detector_for(DetectorSpec("retinaface", max_side=640)).detect(rgb)
    full = detector_for(DetectorSpec("retinaface", max_side=1280)).detect(rgb)
    assert len(small) == len(full)
    # Same faces, same place (within a few pixels), despite detecting on a half-size copy.
    for box in small.boxes:
        assert np.abs(full.boxes - box).max(axis=1).min() < 12


def test_yunet_backend_agrees_on_the_real_photos():
    yunet = detector_for(DetectorSpec("yuface"))
    assert len(yunet.detect(decode_rgb(GROUP_PHOTO.read_bytes(), MAX_PIXELS))) >= 5
    assert len(yunet.detect(decode_rgb(PORTRAIT.read_bytes(), MAX_PIXELS))) == 1


def test_detector_session_is_built_once_per_process():
    spec = DetectorSpec("retinaface", max_side=320)
    assert detector_for(spec) is detector_for(DetectorSpec("retinaface", max_side=320))
    assert detector_for(spec).session is detector_for(spec).session


def test_detector_identity_names_backend_weights_and_settings():
    a, b = DetectorSpec("retinaface").identity, DetectorSpec("retinaface", min_score=0.6).identity
    assert a.startswith("retinaface:") and a != b


def test_insightface_backend_needs_an_existing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="det_10g.onnx"):
        detector_for(DetectorSpec("insightface", model_path=str(tmp_path / "det_10g.onnx")))


def test_crops_are_square_aligned_and_fall_back_to_the_box(retinaface):
    rgb = decode_rgb(PORTRAIT.read_bytes(), MAX_PIXELS)
    found = retinaface.detect(rgb)
    aligned = crop_face(rgb, found.boxes[0], found.landmarks[0], 160, 0.25)
    boxed = crop_face(rgb, found.boxes[0], None, 160, 0.25)
    degenerate = crop_face(rgb, found.boxes[0], np.zeros((5, 2), np.float32), 160, 0.25)
    assert aligned.shape == boxed.shape == degenerate.shape == (160, 160, 3)
    assert laplacian_variance(aligned) > 10  # real content, not an empty canvas
    assert laplacian_variance(np.full((64, 64, 3), 128, np.uint8)) == 0.0


@pytest.mark.parametrize("name", sorted(portrait_variants()))
def test_web_image_modes_decode_to_rgb(name):
    rgb = decode_rgb(portrait_variants()[name], MAX_PIXELS)
    assert rgb.dtype == np.uint8 and rgb.shape == (224, 224, 3)
    assert rgb.std() > 20  # 16-bit scaled, palette expanded, alpha flattened: the face is still there


@pytest.mark.parametrize(
    "name,rule",
    [
        ("zero_bytes", "undecodable_image"),
        ("missing", "undecodable_image"),
        ("not_an_image", "undecodable_image"),
        ("truncated_png", "undecodable_image"),
        ("corrupt_jpeg", "undecodable_image"),
        ("png_bomb", "image_too_large"),
        ("jpeg_bomb", "image_too_large"),
    ],
)
def test_hostile_bytes_are_rejected_with_a_rule(name, rule):
    with pytest.raises(ImageRejected) as caught:
        decode_rgb(bad_images()[name], MAX_PIXELS)
    assert caught.value.rule == rule and caught.value.message


def test_size_limit_is_checked_from_the_header_before_decoding():
    # 7000 x 7000 is under PIL's own bomb limit: only our header check stops it.
    with pytest.raises(ImageRejected, match="7000x7000") as caught:
        decode_rgb(png_bomb(7000, 7000), MAX_PIXELS)
    assert caught.value.rule == "image_too_large" and caught.value.value == 49_000_000


def test_measure_image_records_errors_instead_of_raising(retinaface):
    params = ImageParams(DetectorSpec("retinaface").identity, MAX_PIXELS, 128, 0.25)
    for data in bad_images().values():
        row = measure_image(data, retinaface, params)
        assert row["image_error_rule"] in ("undecodable_image", "image_too_large") and row["crop"] is None
    good = measure_image(PORTRAIT.read_bytes(), retinaface, params)
    assert good["image_error_rule"] is None and len(good["face_scores"]) == 1
    assert decode_image(good["crop"]).shape == (128, 128, 3)
    assert 0.5 < good["face_fraction"] <= 1.0 and good["sharpness"] > 0


def test_perceptual_hash_survives_reencoding_but_separates_different_photos():
    portrait = decode_rgb(PORTRAIT.read_bytes(), MAX_PIXELS)
    variant = decode_rgb(portrait_variants()["cmyk_jpeg"], MAX_PIXELS)
    group = decode_rgb(GROUP_PHOTO.read_bytes(), MAX_PIXELS)

    def distance(a, b):
        return bin((perceptual_hash(a) ^ perceptual_hash(b)) & (2**64 - 1)).count("1")

    assert distance(portrait, variant) <= 6
    assert distance(portrait, group) > 16


def test_detections_sort_best_first():
    found = Detections.build([[0, 0, 1, 1], [0, 0, 2, 2]], [0.6, 0.9], np.zeros((2, 5, 2)))
    assert found.scores.tolist() == pytest.approx([0.9, 0.6]) and found.boxes[0, 2] == 2


@pytest.fixture(scope="module")
def scrfd_model(tmp_path_factory):
    from fvlp_core.detection.scrfd_export import export_retinaface_as_scrfd

    return export_retinaface_as_scrfd(tmp_path_factory.mktemp("models") / "det_retinaface_scrfd.onnx")


def test_insightface_routes_a_local_detector_file_to_its_scrfd_code(scrfd_model):
    from insightface.model_zoo import get_model
    from insightface.model_zoo.scrfd import SCRFD

    assert isinstance(get_model(str(scrfd_model)), SCRFD)


def test_insightface_backend_matches_the_offline_detector_on_real_photos(scrfd_model, retinaface):
    insight = detector_for(DetectorSpec("insightface", model_path=str(scrfd_model)))
    group = decode_rgb(GROUP_PHOTO.read_bytes(), MAX_PIXELS)
    theirs, ours = insight.detect(group), retinaface.detect(group)
    assert len(theirs) == len(ours) >= 5
    for box, marks in zip(ours.boxes, ours.landmarks):
        nearest = np.abs(theirs.boxes - box).max(axis=1).argmin()
        assert np.abs(theirs.boxes[nearest] - box).max() < 4
        assert np.abs(theirs.landmarks[nearest] - marks).max() < 4
    portrait = insight.detect(decode_rgb(PORTRAIT.read_bytes(), MAX_PIXELS))
    assert len(portrait) == 1 and portrait.landmarks.shape == (1, 5, 2)
    assert DetectorSpec("insightface", model_path=str(scrfd_model)).identity != DetectorSpec("retinaface").identity


def test_16_bit_greyscale_converts_in_integers_without_float_copies():
    """A 16-bit PNG scan is scaled to 8 bits exactly (x / 257) with a peak of a few bytes per
    pixel; float64 copies cost 8 bytes per pixel each (1.1 GB for a 6300 x 6300 scan)."""
    import tracemalloc

    from PIL import Image

    from fvlp_core.detection.images import to_rgb_array

    ramp = (np.arange(1000 * 1000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1000, 1000)
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    tracemalloc.start()
    try:
        rgb = to_rgb_array(image)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rgb.dtype == np.uint8 and rgb.shape == (1000, 1000, 3)
    assert np.array_equal(rgb[..., 0], (ramp // 257).astype(np.uint8))
    assert peak < 9 * ramp.size, f"{peak / ramp.size:.1f} bytes per pixel"


def test_a_jpeg_of_thousands_of_scans_is_refused_before_decoding():
    """5,000 scans in a small progressive JPEG cost a decode pass each (17 s for 191 KB)."""
    import io

    from PIL import Image

    from fvlp_core.detection.images import ImageRejected, decode_rgb

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 120, 80)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    # Repeat the last scan (from its marker to the end-of-image marker) thousands of times.
    last_scan = data.rindex(b"\xff\xda")
    hostile = data[:last_scan] + data[last_scan:-2] * 5000 + b"\xff\xd9"
    with pytest.raises(ImageRejected) as caught:
        decode_rgb(hostile, max_pixels=40_000_000)
    assert caught.value.rule == "undecodable_image" and "scans (limit 100)" in caught.value.message
    assert decode_rgb(data, max_pixels=40_000_000).shape == (64, 64, 3)  # an ordinary progressive JPEG
