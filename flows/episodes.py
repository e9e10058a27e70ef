"""Episodes flow: cleaned faces (or an FS2K-SDE root) -> sketch-episode dataset.

``fvlp episodes`` builds ``--episodes`` (default ``<data_root>/episodes``): one drawing
episode of ``--steps-per-episode`` cumulative sketches per gallery photo, from the cleaned
faces or from ``--fs2k-sde``. Fine-tuning and evaluation read the build it leaves there;
they never build or rebuild episodes themselves. A complete build with the same inputs
and settings is kept as it is.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from fvlp_core.config import EpisodesConfig
from tasks.episodes import build_episodes


@flow(name="episodes")
def episodes_flow(config: EpisodesConfig = EpisodesConfig()) -> dict[str, Any]:
    """Returns :func:`storage.episodes.read_episodes_reference`'s keys and ``built``."""
    return build_episodes(config)
