"""Evaluate flow: a fine-tuned checkpoint on sketch episodes -> SLFIR metrics in the results store.

``fvlp evaluate`` reads the episodes build (``--episodes``), embeds the split's gallery
and every step of every episode once, scores sketch-only and sketch+text queries (m@A,
m@B, wm@A, wm@B, acc@1/5/10 curves) and caption<->photo recall, then writes metrics,
curves and artifact paths to the DuckDB results store in one transaction. A failure
anywhere leaves the run row ``failed`` with no results. The curve plot and a summary
table are attached as Prefect artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from fvlp_core.config import EvaluateConfig, flow_config
from storage.episodes import read_episodes_reference
from storage.results import ResultsStore
from tasks.evaluate import embed_episodes, report_evaluation, resolve_checkpoint, score_episodes
from tasks.lineage import run_lineage


@flow(name="evaluate")
def evaluate_flow(config: EvaluateConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"run_id", "metrics", "headline", "plot", "summary"}``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(EvaluateConfig, config, data_root)
    logger = get_run_logger()
    store = ResultsStore(config.paths.results_store)
    with store.run("evaluate", config=config.model_dump(mode="json"), lineage=run_lineage()) as run_id:
        model = resolve_checkpoint(config)
        episodes = read_episodes_reference(config.episodes_dir)
        if config.split == "train" and episodes["train_steps"] != episodes["steps"]:
            raise ValueError(
                f"{config.episodes_dir}: train episodes keep every recorded step, not T = "
                f"{episodes['steps']}; evaluate the test split"
            )
        store.set_fingerprints(
            run_id,
            dataset_fingerprint=f"{episodes['fingerprint']}:{config.split}",
            model_fingerprint=model["fingerprint"],
        )
        gallery, embedded, matches = embed_episodes(config, model["checkpoint"], episodes["steps"])
        result = score_episodes(gallery, embedded, matches)
        report = report_evaluation(result, run_id, config)
        metrics = result.metric_rows(config.split)
        store.record_results(
            run_id,
            metrics=metrics,
            curves=result.curve_rows(),
            artifacts=[
                {"kind": "curves_png", "path": report["plot"]},
                {"kind": "summary_md", "path": report["summary"]},
            ],
        )
    logger.info("evaluation %s\n%s", run_id, report["markdown"])
    return {
        "run_id": run_id,
        "metrics": {f"{m['variant']}/{m['name']}": m["value"] for m in metrics},
        "headline": result.headline(),
        "plot": report["plot"],
        "summary": report["summary"],
    }
