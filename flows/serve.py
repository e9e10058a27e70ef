"""`fvlp serve`: register every deployment in prefect.yaml with a Prefect server and run them here.

One process registers the deployments (the UI lists them, with their schedules and
parameter forms) and executes their runs, so a one-machine setup needs no work pool
or worker. Every form carries the data root this process resolves (FVLP_DATA_ROOT, else
./fvlp-data where serve started), made absolute; a run can change it. Cleaning runs take a
slot of Prefect's global concurrency limit ``fvlp-clean-writers`` inside the flow, so here
as under workers an on-demand clean and the nightly re-clean never write at once.

prefect.yaml stays the single definition: `prefect deploy --all` plus
workers on several machines reads the same file (docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron
from prefect.settings import PREFECT_API_URL

from fvlp_core.config import Paths, resolve_config

PROJECT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"


def _concurrency(spec: Any) -> ConcurrencyLimitConfig | int | None:
    return ConcurrencyLimitConfig(**spec) if isinstance(spec, dict) else spec


def load_deployments(
    project_file: Path = PROJECT_FILE, names: list[str] | None = None, data_root: Path | None = None
) -> list[RunnerDeployment]:
    """The deployments of ``project_file`` (all, or those in ``names``) as served deployments;
    ``data_root`` (absolute) becomes each one's ``data_root`` parameter, shown in the run form."""
    project_file = Path(project_file).resolve()
    spec = yaml.safe_load(project_file.read_text())
    known = [item["name"] for item in spec["deployments"]]
    unknown = sorted(set(names or ()) - set(known))
    if unknown:
        raise ValueError(f"{project_file} has no deployment {unknown}; it defines {known}")
    deployments = []
    for item in spec["deployments"]:
        if names and item["name"] not in names:
            continue
        file, _, function = item["entrypoint"].partition(":")
        flow = load_flow_from_entrypoint(f"{project_file.parent / file}:{function}")
        deployments.append(
            flow.to_deployment(
                name=item["name"],
                description=item.get("description"),
                tags=item.get("tags"),
                parameters={
                    **({"data_root": str(data_root)} if data_root is not None else {}),
                    **(item.get("parameters") or {}),
                },
                schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in item.get("schedules") or []],
                concurrency_limit=_concurrency(item.get("concurrency_limit")),
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fvlp serve", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="Deployments to serve (default: all in the project file)")
    parser.add_argument("--project-file", type=Path, default=PROJECT_FILE, help="prefect.yaml to read")
    parser.add_argument("--limit", type=int, default=None, help="Most flow runs executed at once by this process")
    args = parser.parse_args(argv)
    if not PREFECT_API_URL.value():
        parser.error(
            "PREFECT_API_URL is not set: start a server (`prefect server start --host 127.0.0.1`) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api so the deployments are registered with it"
        )
    # The runs execute in this process: its FVLP_DATA_ROOT (else ./fvlp-data where serve was
    # started) is their data root, made absolute and written into each run form.
    data_root = resolve_config(Paths).data_root.resolve()
    # Stage flows resolve relative paths against the working directory: keep it the checkout's.
    os.chdir(Path(args.project_file).resolve().parent)
    serve(*load_deployments(args.project_file, args.names, data_root), limit=args.limit)
    return 0
