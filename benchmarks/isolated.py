"""Measurements that need a process of their own: a fresh child per figure, and the memory
a call adds over what its process already holds (Linux only)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_added_mib(run: Callable[[], T]) -> tuple[T, float]:
    """``run()``'s result and the peak resident memory it added, in MiB: VmHWM, reset to the
    current resident set just before the call, minus that resident set. Run it in a fresh
    process per measurement, so earlier allocations freed to the allocator do not hide it."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
    resident = _status_kib("VmRSS")
    result = run()
    return result, (_status_kib("VmHWM") - resident) / 1024


def run_isolated(module: str, *args: object, env: dict[str, str | None] | None = None) -> dict[str, Any]:
    """Run ``python -m <module> --child <args>`` in a fresh process and return the JSON object
    it prints last (the child's measurement); ``env`` values of None remove the variable."""
    child_env = {**os.environ, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-m", module, "--child", *map(str, args)],
        env={name: value for name, value in child_env.items() if value is not None},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
