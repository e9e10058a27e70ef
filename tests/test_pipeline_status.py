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
