"""Prefect tasks that launch training as a subprocess (``python -m fvlp_train`` or torchrun).

Training runs out of process so a GPU work pool's worker only needs this command line, a
crash or OOM cannot take the flow down with it, and torchrun can own the ranks. The
child's stdout (one JSON line per optimizer step, then a ``done`` line) is streamed to the
Prefect logger; its stderr (the progress bar) goes on to the flow's stderr, and its last lines
(a traceback, when the child fails) go into the error the task raises, so the UI shows them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from fvlp_core.config import TrainConfig
from fvlp_core.digest import file_digest
from storage.checkpoints import LAUNCH_CONFIG_NAME, STEPS_LOG_NAME, checkpoint_path, run_dir
from storage.results import ResultsStore, new_run_id
from tasks.lineage import run_lineage

TAIL_LINES = 40


def with_run_id(config: TrainConfig, stage: str) -> TrainConfig:
    """The config with its run id fixed (generated when absent): it names checkpoints and results."""
    return config if config.run_id else config.model_copy(update={"run_id": new_run_id(stage)})


def is_resume(config: TrainConfig, stage: str) -> bool:
    return checkpoint_path(config.paths.checkpoints_dir, stage, config.run_id).is_file()


def training_command(stage: str, config: TrainConfig, config_path: Path) -> list[str]:
    """The command one node runs: plain python for one process, torchrun otherwise."""
    module = ["-m", "fvlp_train", stage, "--config", str(config_path)]
    if config.nproc_per_node * config.nnodes == 1:
        return [sys.executable, *module]
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(config.nproc_per_node),
        "--nnodes",
        str(config.nnodes),
    ]
    if config.nnodes > 1:
        launcher += [
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            str(config.rdzv_endpoint),
            "--rdzv-id",
            str(config.run_id),
        ]
    else:
        launcher += ["--standalone"]
    return [*launcher, *module]


def _relay_stderr(stream: Any, tail: deque[str]) -> None:
    """Pass the child's stderr through unchanged (tqdm redraws with \\r) and keep its last lines."""
    sink = getattr(sys.stderr, "buffer", None)
    pending = ""
    for chunk in iter(lambda: stream.read1(4096), b""):
        text = chunk.decode(errors="replace")
        if sink is not None:
            sink.write(chunk)
            sink.flush()
        else:  # a replaced sys.stderr (pytest capture, notebooks) takes text only
            sys.stderr.write(text)
        pending += text
        *lines, pending = re.split(r"[\r\n]", pending)
        tail.extend(line for line in lines if line.strip())
    if pending.strip():
        tail.append(pending)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# False while the pipeline runs a stage with no other stage beside it. Idle OpenMP threads of
# a training child then spin (ACTIVE) instead of sleeping: 0.84x PASSIVE's step time on a quiet
# CPU, but 1.25x with one core busy, and OpenMP's own default 3.05x (benchmarks/omp_wait.py).
# A training started on its own cannot know what else runs, so it waits passively.
SHARING_CPU: ContextVar[bool] = ContextVar("fvlp_sharing_cpu", default=True)


def training_environment(config: TrainConfig) -> dict[str, str]:
    """The child's environment: thread counts set from the config, never inherited (an earlier
    stage in this process, a Dask cluster say, may have left OMP_NUM_THREADS=1 behind), and the
    OpenMP wait policy of :data:`SHARING_CPU` unless the environment names one."""
    threads = str(config.threads_per_process())
    return {
        "OMP_WAIT_POLICY": "PASSIVE" if SHARING_CPU.get() else "ACTIVE",
        **os.environ,
        **dict.fromkeys(THREAD_VARIABLES, threads),
        "PYTHONUNBUFFERED": "1",
    }


@task(name="train", cache_policy=NO_CACHE)
def run_training(stage: str, config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) one training run to completion; returns the child's ``done`` record.

    Raises RuntimeError with the last output lines when the child exits non-zero.
    """
    logger = get_run_logger()
    folder = run_dir(config.paths.checkpoints_dir, stage, config.run_id)
    folder.mkdir(parents=True, exist_ok=True)
    config_json = config.model_dump_json()
    config_path = folder / LAUNCH_CONFIG_NAME
    config_path.write_text(json.dumps(json.loads(config_json), indent=2, sort_keys=True) + "\n")
    command = training_command(stage, config, config_path)
    logger.info("launching %s run %s: %s", stage, config.run_id, " ".join(command))

    done: dict[str, Any] | None = None
    curve: list[dict[str, Any]] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    errors: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=training_environment(config)
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        relay = threading.Thread(target=_relay_stderr, args=(child.stderr.buffer, errors), daemon=True)
        relay.start()
        with open(folder / STEPS_LOG_NAME, "a") as steps_log:
            for line in child.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                record = _json_record(line)
                if record and record.get("event") == "step":
                    # One record per optimizer step: into the run's log file and the results
                    # store, not the terminal, where the progress bar already counts steps.
                    steps_log.write(line + "\n")
                    curve.extend(curve_rows(record))
                    continue
                if record and record.get("event") == "done":
                    done = record
                logger.info("%s", line)
        relay.join()
    if child.returncode != 0:
        raise RuntimeError(
            f"{stage} run {config.run_id} failed (exit {child.returncode}); last output:\n"
            + "\n".join(tail)
            + "\nlast errors:\n"
            + "\n".join(errors)
        )
    if done is None:
        raise RuntimeError(
            f"{stage} run {config.run_id} exited 0 without a 'done' record; last output:\n" + "\n".join(tail)
        )
    return {**done, "curve": curve}


# Fields of a step record that are not measurements.
_STEP_FIELDS = frozenset({"event", "stage", "step"})


def curve_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """``training_curves`` rows of one step record: every loss part, lr, samples/s and epoch."""
    return [
        {"step": int(record["step"]), "metric": name, "value": float(value)}
        for name, value in record.items()
        if name not in _STEP_FIELDS and isinstance(value, (int, float))
    ]


def _json_record(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def metric_rows(metrics: dict[str, float], split: str, variant: str) -> list[dict[str, Any]]:
    return [
        {"split": split, "variant": variant, "name": name, "value": float(value)} for name, value in metrics.items()
    ]


def train_and_record(
    stage: str, config: TrainConfig, *, dataset_fingerprint: str, metrics_split: str
) -> dict[str, Any]:
    """Run training inside a results-store run: its row, held-out metrics and checkpoint artifact.

    A resumed run already has its results row, so a resumption gets its own row whose
    config names the same training run id.
    """
    store_run_id = new_run_id(stage) if is_resume(config, stage) else config.run_id
    store = ResultsStore(config.paths.results_store)
    with store.run(
        stage,
        config=config.model_dump(mode="json"),
        run_id=store_run_id,
        dataset_fingerprint=dataset_fingerprint,
        lineage=run_lineage(),
    ) as results_run:
        done = run_training(stage, config)
        # The model this run made, by content: the evaluation that scores it records the same.
        store.set_fingerprints(results_run, model_fingerprint=f"sha256:{file_digest(Path(done['checkpoint']))}")
        store.record_results(
            results_run,
            metrics=metric_rows(done["metrics"], metrics_split, stage),
            training_curves=done["curve"],
            artifacts=[{"kind": "checkpoint", "path": done["checkpoint"]}],
        )
    return done
