"""`fvlp status`: the last runs of the results store, failures with their error."""

from __future__ import annotations

import pytest

from flows.cli import main
from storage.results import ResultsStore


def test_status_lists_newest_runs_with_headlines_and_errors(tmp_path, capsys):
    store = ResultsStore(tmp_path / "results.duckdb")
    with store.run("clean", {}):
        pass
    with pytest.raises(ValueError):
        with store.run("ingest", {}):
            raise ValueError("shard-00003.parquet row 17 (SAMPLE_ID 42): not an image")
    with store.run("evaluate", {}) as run_id:
        store.record_results(
            run_id,
            metrics=[
                {"split": "test", "variant": "sketch+text", "name": "m_at_A", "value": 97.125},
                {"split": "test", "variant": "sketch+text", "name": "m_at_B", "value": 50.0},
                {"split": "train", "variant": "sketch+text", "name": "m_at_B", "value": 99.0},
            ],
        )

    assert main(["status", "--data-root", str(tmp_path), "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert len(lines) == 3  # header + the two newest runs
    assert "evaluate" in lines[1] and "finished" in lines[1] and "sketch+text m@A 97.12 m@B 50.00" in lines[1]
    assert "ingest" in lines[2] and "failed" in lines[2]
    assert "shard-00003.parquet row 17 (SAMPLE_ID 42): not an image" in lines[2]


def test_status_without_a_store_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["status", "--data-root", str(tmp_path)])
    assert "does not exist yet" in capsys.readouterr().err


def test_every_flow_shows_its_headline(tmp_path, capsys):
    """Clean and pretrain rows used to show an empty result."""
    store = ResultsStore(tmp_path / "results.duckdb")
    recorded = {
        "ingest": {
            "metrics": [
                {"split": "raw", "variant": "fetch_status", "name": s, "value": n}
                for s, n in (("ok", 90.0), ("not_found", 10.0))
            ]
        },
        "clean": {"cleaning_stats": [{"rule": "all_rules", "kept": 70, "rejected": 30}]},
        "pretrain": {
            "metrics": [
                {"split": "heldout", "variant": "pretrain", "name": n, "value": v}
                for n, v in (("heldout_t2i_r_at_1", 7.04), ("chance_r_at_1", 0.63), ("heldout_itm_accuracy", 79.7))
            ]
        },
        "finetune": {
            "metrics": [
                {"split": "validation", "variant": "finetune", "name": n, "value": v}
                for n, v in (("m_at_B", 45.3), ("selected_epoch", 3.0))
            ]
        },
        "pipeline": {
            "metrics": [
                {"split": "pipeline", "variant": s, "name": "reused", "value": float(s == "ingest")}
                for s in ("ingest", "clean")
            ]
        },
    }
    for flow, results in recorded.items():
        with store.run(flow, {}) as run_id:
            store.record_results(run_id, **results)
    assert main(["status", "--data-root", str(tmp_path)]) == 0
    shown = {line.split()[2]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert shown["ingest"].endswith("100 rows: ok 90, not_found 10")
    assert shown["clean"].endswith("kept 70 of 100 rows")
    assert shown["pretrain"].endswith("held-out text->image R@1 7.0 (chance 0.6) ITM acc 79.7")
    assert shown["finetune"].endswith("validation m@B 45.30 epoch 3")
    assert shown["pipeline"].endswith("reused 1 of 2 stages (ingest)")
