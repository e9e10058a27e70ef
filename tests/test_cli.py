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


def test_version_flag_prints_the_installed_version(capsys) -> None:
    from flows.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().startswith("fvlp 0.")


def test_bad_input_ends_with_one_line_saying_why_and_no_traceback(tmp_path, prefect_harness, capfd) -> None:
    """A broken metadata file used to print 133 lines and 3 tracebacks."""
    from flows.cli import main

    (tmp_path / "bad.csv").write_text("URL,TEXT\nhttp://a/1.jpg,a man\nhttp://a/2.jpg,x,y,z\n")
    (tmp_path / "images").mkdir()
    argv = ["ingest", "--source", "folder", "--metadata", str(tmp_path / "bad.csv")]
    argv += ["--images", str(tmp_path / "images")]
    assert main([*argv, "--data-root", str(tmp_path / "data")]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == (
        f"fvlp ingest: error: {tmp_path / 'bad.csv'}: not readable as CSV (CSV parse error: Expected 2 columns, "
        "got 4: http://a/2.jpg,x,y,z) (--debug shows the traceback)"
    )
    with pytest.raises(Exception, match="not readable as CSV"):
        main(["--debug", *argv, "--data-root", str(tmp_path / "data")])


def test_every_subcommand_renders_its_help(capsys) -> None:
    """Flag help comes from the configs' field descriptions: a stray % in one breaks argparse's
    --help for its whole subcommand."""
    import argparse

    from flows.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"ingest", "clean", "pretrain", "finetune", "evaluate", "run"} <= set(subcommands)
    for name, subparser in subcommands.items():
        assert name in subparser.format_help()
