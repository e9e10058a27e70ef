"""The `fvlp` command line's process settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = (
    "from flows.cli import _quiet_prefect; _quiet_prefect()\n"
    "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as budget\n"
    "print(budget.value())"
)


@pytest.mark.parametrize("exported, expected", [(None, "300"), ("45", "45")])
def test_temporary_prefect_server_gets_a_startup_budget_a_loaded_machine_meets(exported, expected) -> None:
    """Prefect's 20 s default killed `make run` on a busy 2-core machine before any work."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    if exported:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = exported
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected
