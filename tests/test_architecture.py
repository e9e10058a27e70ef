"""The layering rules of docs/architecture.md, checked on the source and on a live import.

* ``fvlp_core`` (models, transforms, metrics, embedding API) imports none of ``storage``,
  ``tasks``, ``flows``, ``fvlp_train`` nor Prefect: usable from a notebook or torchrun.
* ``storage`` imports none of ``tasks``, ``flows``, ``fvlp_train`` nor Prefect.
* ``fvlp_train`` (the training app, run as a child process) imports no ``tasks``/``flows``/Prefect.
* ``fvlp_app`` (the query API and drawing page) stands on ``fvlp_core`` and ``storage`` only.
* Dask workers run ``tasks.clean_worker``; importing it must not load Prefect.
* No module outside ``storage`` reads or writes Parquet itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "fvlp_core": {"storage", "tasks", "flows", "fvlp_train", "prefect"},
    "storage": {"tasks", "flows", "fvlp_train", "prefect"},
    "fvlp_train": {"tasks", "flows", "prefect"},
    "fvlp_app": {"tasks", "flows", "fvlp_train", "prefect"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in ``path``, including imports inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_nothing_above_it(layer: str) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[layer])
        for path in sorted((REPO / layer).rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_parquet_is_read_and_written_only_in_storage() -> None:
    outside = [
        str(path.relative_to(REPO))
        for layer in ("fvlp_core", "fvlp_train", "tasks", "flows")
        for path in sorted((REPO / layer).rglob("*.py"))
        if "pyarrow.parquet" in path.read_text()
    ]
    assert outside == []


@pytest.mark.parametrize("module", ["tasks.clean_worker", "fvlp_core.embed", "fvlp_train.engine", "storage.results"])
def test_importing_loads_no_prefect(module: str) -> None:
    """What a Dask worker, a notebook or a training child imports pulls in no Prefect at all."""
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
