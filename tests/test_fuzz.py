"""Property tests (hypothesis) over the caption filters and the metadata reader.

Scraped metadata holds anything: NaN and infinite sizes, ids beyond int64, bytes that are
not UTF-8, captions of any script and length. For every generated input the reader must
either return one row per input row, each problem listed in ``metadata_issues``, or raise
a :class:`MetadataError` naming the file; the caption measurements and rules must give
every caption a decision. Examples are bounded so the whole module runs in seconds.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fvlp_core.config import CleanConfig
from fvlp_core.filters import (
    MINHASH_PERMUTATIONS,
    RULE_NAMES,
    caption_text,
    decide,
    measure_captions,
    minhash,
    normalise_caption,
    spam_category,
)
from storage.raw import MetadataError, read_metadata

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- metadata reader

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def size_columns(draw, n: int) -> pa.Array:
    """WIDTH/HEIGHT as scraped: floats (NaN, inf, fractions), int64 of any size, or nulls."""
    kind = draw(st.sampled_from(["float", "int", "null"]))
    if kind == "float":
        return pa.array(draw(st.lists(st.none() | any_float, min_size=n, max_size=n)), pa.float64())
    if kind == "int":
        return pa.array(draw(st.lists(st.none() | int64s, min_size=n, max_size=n)), pa.int64())
    return pa.nulls(n)


@st.composite
def metadata_tables(draw) -> tuple[pa.Table, dict]:
    n = draw(st.integers(min_value=1, max_value=8))
    id_kind = draw(st.sampled_from(["int64", "float64", "uint64"]))
    if id_kind == "int64":
        ids = pa.array(draw(st.lists(int64s, min_size=n, max_size=n)), pa.int64())
    elif id_kind == "uint64":
        ids = pa.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n)), pa.uint64())
    else:
        ids = pa.array(draw(st.lists(any_float, min_size=n, max_size=n)), pa.float64())
    if draw(st.booleans()):
        text = pa.array(draw(st.lists(st.none() | st.binary(max_size=40), min_size=n, max_size=n)), pa.binary())
    else:
        text = pa.array(draw(st.lists(st.none() | st.text(max_size=40), min_size=n, max_size=n)), pa.string())
    table = pa.table(
        {
            "SAMPLE_ID": ids,
            "URL": pa.array(draw(st.lists(st.none() | st.text(max_size=30), min_size=n, max_size=n)), pa.string()),
            "TEXT": text,
            "WIDTH": draw(size_columns(n)),
            "HEIGHT": draw(size_columns(n)),
            "similarity": pa.array(draw(st.lists(st.none() | any_float, min_size=n, max_size=n)), pa.float64()),
        }
    )
    return table, {"id_kind": id_kind}


def _valid_id(value) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return math.isfinite(value) and value == math.floor(value) and -(2**63) <= value < 2**63
    return -(2**63) <= value < 2**63


def _expected_size(value) -> tuple[int | None, bool]:
    """(value the raw shard should hold, whether an issue must be listed)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None, True
    if isinstance(value, float) and value != math.floor(value):
        return None, True
    if not -(2**31 - 1) <= value <= 2**31 - 1:  # storage.raw.MAX_DIMENSION: no image format is that large
        return None, True
    return int(value), value <= 0


@FUZZ
@given(metadata_tables())
def test_metadata_reader_accounts_for_every_row(case):
    table, _ = case
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "scraped.parquet"
        pq.write_table(table, path)
        ids = table.column("SAMPLE_ID").to_pylist()
        try:
            read = read_metadata([path])
        except MetadataError as err:
            assert "scraped.parquet" in str(err) and "SAMPLE_ID" in str(err)
            assert not all(_valid_id(v) for v in ids), f"valid ids refused: {err}"
            return
    assert all(_valid_id(v) for v in ids), "an unusable SAMPLE_ID was accepted"
    assert read.num_rows == table.num_rows
    assert read.column("SAMPLE_ID").to_pylist() == [int(v) for v in ids]
    assert read.column("input_row").to_pylist() == list(range(table.num_rows))
    issues = read.column("metadata_issues").to_pylist()
    for name in ("WIDTH", "HEIGHT"):
        for row, (given_value, stored) in enumerate(zip(table.column(name).to_pylist(), read.column(name).to_pylist())):
            expected, flagged = _expected_size(given_value)
            assert stored == expected, (name, row, given_value, stored)
            assert flagged == any(issue.startswith(f"{name}:") for issue in issues[row]), (
                name,
                given_value,
                issues[row],
            )
    for row, (raw, text) in enumerate(zip(table.column("TEXT").to_pylist(), read.column("TEXT").to_pylist())):
        if raw is None:
            assert text is None
            continue
        raw_bytes = raw.encode() if isinstance(raw, str) else raw
        try:
            assert text == raw_bytes.decode("utf-8")
            assert not any(issue.startswith("TEXT:") for issue in issues[row])
        except UnicodeDecodeError:
            assert text == raw_bytes.decode("utf-8", errors="replace")
            assert any(issue.startswith("TEXT:") for issue in issues[row])
    for value in read.column("similarity").to_pylist():
        assert value is None or not math.isnan(value)


# ----------------------------------------------------------------------------- caption filters

captions = st.one_of(
    st.none(),
    st.text(max_size=300),
    st.binary(max_size=120),
    st.text(alphabet=st.characters(categories=["L", "Zs", "P"]), min_size=1, max_size=80),
    st.sampled_from(
        [
            "Portrait of a smiling man with short hair",
            "Click here www.x.com",
            "<b>bold</b> woman",
            "#a #b #c #d",
            "buy buy buy buy buy buy",
            "",
            "   ",
            "\ufffd\ufffd",
            "x" * 5000,
        ]
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_caption_text_functions_are_total_and_stable(text):
    spam = spam_category(text)
    assert spam in (None, "url", "html", "boilerplate", "hashtags", "repetition")
    key = normalise_caption(text)
    assert key == key.strip() and "  " not in key
    signature = minhash(key)
    assert len(signature) in (0, MINHASH_PERMUTATIONS)
    assert (len(signature) == 0) == (key == "")
    assert signature == minhash(key)  # deterministic: duplicates are found across runs
    assert caption_text(text.encode("utf-8")) == (text, True)
    assert caption_text(text) == (text, "\ufffd" not in text)  # U+FFFD: mangled upstream


def _caption_frame(values: list) -> pd.DataFrame:
    """Measurements of ``values`` beside a clean image measurement, as the decide step reads them."""
    measured = measure_captions(values)
    n = len(values)
    frame = pd.DataFrame(measured)
    frame["image_error_rule"] = None
    frame["image_error"] = None
    frame["image_width"] = [256] * n
    frame["image_height"] = [256] * n
    frame["face_scores"] = [[0.99]] * n
    frame["face_areas"] = [[10_000.0]] * n
    frame["face_score"] = [0.99] * n
    frame["face_fraction"] = [0.4] * n
    frame["sharpness"] = [100.0] * n
    frame["agreement"] = [None] * n
    frame["duplicate_similarity"] = np.zeros(n)  # no earlier caption alike
    frame["duplicate_distance"] = np.full(n, 64)  # no earlier image alike (Hamming distance of 64-bit hashes)
    return frame


@FUZZ
@given(st.lists(captions, min_size=1, max_size=12))
def test_every_caption_gets_a_decision_with_named_reasons(values):
    config = CleanConfig()
    measured = measure_captions(values)
    for name, column in measured.items():
        assert len(column) == len(values), name
    texts = [caption_text(v)[0].strip() for v in values]  # surrounding whitespace is not caption
    assert measured["caption_chars"] == [len(t) for t in texts]
    assert all(r is None or 0.0 <= r <= 1.0 + 1e-9 for r in measured["english_ratio"])

    decided = decide(_caption_frame(values), config, agreement_applied=False)
    assert len(decided) == len(values)
    for text, value, (kept, reasons, measurements) in zip(
        texts, values, decided[["kept", "reasons", "measurements"]].itertuples(index=False)
    ):
        assert set(reasons) <= set(RULE_NAMES)
        assert kept == (len(reasons) == 0)
        assert ("caption_empty" in reasons) == (text == "")
        assert ("caption_too_long" in reasons) == (len(text) > config.max_caption_chars)
        assert ("caption_not_utf8" in reasons) == (not caption_text(value)[1])
        assert set(json.loads(measurements)) == set(RULE_NAMES)


@pytest.mark.parametrize("length", [100_000, 1_000_000])
def test_huge_captions_are_measured_from_a_bounded_prefix(length):
    measured = measure_captions(["A portrait of a smiling woman " * (length // 30)])
    assert measured["caption_chars"][0] >= length - 30
    assert len(measured["caption_minhash"][0]) == MINHASH_PERMUTATIONS
