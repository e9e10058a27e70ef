"""Test-wide environment: Prefect fully offline, state in a temporary PREFECT_HOME."""

from __future__ import annotations

import os
import tempfile

# Must be set before prefect is imported anywhere.
_PREFECT_HOME = tempfile.mkdtemp(prefix="fvlp-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary local Prefect server for tests that run flows (about 6 s to start, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def small_corpus():
    """A 200-row embedded corpus of 80 people (metadata in milliseconds, images on demand)."""
    from fvlp_core.corpus import EmbeddedCorpus

    return EmbeddedCorpus(rows=200, identities=80, seed=1)
