"""The current Prefect flow run and its parent, for the results store's ``runs`` rows."""

from __future__ import annotations

from prefect.runtime import flow_run

from storage.results import RunLineage


def run_lineage() -> RunLineage:
    """Ids of the flow run being executed and of the flow run that started it (None outside a flow)."""
    own = flow_run.id
    parent = flow_run.parent_flow_run_id
    return RunLineage(str(own) if own else None, str(parent) if parent else None)
