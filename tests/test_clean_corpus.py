"""Cleaning the embedded corpus: scored against its ground truth, attributes from truth or the head."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fvlp_core.attributes import ATTRIBUTE_INDEX
from fvlp_core.config import CleanConfig, IngestConfig, Paths
from storage.clean import read_decisions, read_faces
from storage.results import ResultsStore
from storage.shards import write_shard
from storage.source import GROUND_TRUTH_FILE, read_ground_truth


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory, prefect_harness):
    from flows.ingest import ingest_flow

    root = tmp_path_factory.mktemp("corpus")
    ingest_flow(IngestConfig(paths=Paths(data_root=root), rows=240, identities=60, seed=3, shard_size=80))
    return root


@pytest.mark.slow
def test_corpus_cleaning_is_scored_stored_and_uses_true_attributes(corpus_root):
    from flows.clean import clean_flow

    config = CleanConfig(paths=Paths(data_root=corpus_root), workers=2)
    result = clean_flow(config)
    assert result["kept"] + result["rejected"] == result["input_rows"] == 240
    assert result["attribute_source"] == {"ground_truth": result["kept"], "attribute_head": 0}

    stats = (
        ResultsStore(config.paths.results_store)
        .query_df(
            "SELECT rule, kept, rejected, precision, recall FROM cleaning_stats WHERE run_id = ?", [result["run_id"]]
        )
        .set_index("rule")
    )
    overall = stats.loc["all_rules"]
    assert overall["kept"] == result["kept"] and overall["recall"] > 0.9 and overall["precision"] > 0.6
    for rule in ("undecodable_image", "no_face", "multiple_faces", "not_english"):
        assert stats.loc[rule, "rejected"] > 0 and stats.loc[rule, "precision"] > 0.8, rule

    truth = read_ground_truth(config.paths.source_dir).set_index("SAMPLE_ID")
    faces = read_faces(config.paths.clean_dir).to_pandas()
    assert (faces["identity_id"].to_numpy() == truth.loc[faces["SAMPLE_ID"], "identity_id"].to_numpy()).all()
    assert all(list(a) == list(truth.loc[s, "attributes"]) for s, a in zip(faces["SAMPLE_ID"], faces["attributes"]))


@pytest.mark.slow
def test_rows_without_ground_truth_get_attributes_from_the_trained_head(corpus_root):
    from flows.clean import clean_flow

    config = CleanConfig(paths=Paths(data_root=corpus_root), workers=1, attribute_head_epochs=5)
    truth_path = config.paths.source_dir / GROUND_TRUTH_FILE
    truth = read_ground_truth(config.paths.source_dir)
    kept = read_decisions(config.paths.clean_dir, ["SAMPLE_ID", "kept"]).to_pandas()
    hidden = set(kept[kept["kept"]]["SAMPLE_ID"].iloc[::4])
    schema = pq.read_schema(truth_path)
    original = pq.read_table(truth_path)
    try:
        partial = truth[~truth["SAMPLE_ID"].isin(hidden)].reset_index(drop=True)
        write_shard(pa.Table.from_pandas(partial, schema=schema, preserve_index=False), truth_path)
        result = clean_flow(config)
    finally:
        write_shard(original, truth_path)
    assert result["remeasured_rows"] == 0
    assert result["attribute_source"]["attribute_head"] == len(hidden)
    assert (config.paths.checkpoints_dir / "attribute_head" / "attribute_head.pt").exists()
    faces = read_faces(config.paths.clean_dir).to_pandas().set_index("SAMPLE_ID")
    predicted = faces.loc[sorted(hidden)]
    assert (predicted["identity_id"] == -1).all()
    assert all(a in ATTRIBUTE_INDEX for attrs in predicted["attributes"] for a in attrs)
    assert predicted["caption"].str.len().min() > 10
