"""Episodes flow: cleaned faces (or an FS2K-SDE root) -> sketch-episode dataset.

``fvlp episodes`` builds ``--episodes`` (default ``<data_root>/episodes``): one drawing
episode of ``--steps-per-episode`` cumulative sketches per gallery photo, from the cleaned
faces or from ``--fs2k-sde``. Fine-tuning and evaluation read the build it leaves there;
they never build or rebuild episodes themselves. A complete build with the same inputs
and settings is kept as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from fvlp_core.config import EpisodesConfig, flow_config
from tasks.episodes import build_episodes


@flow(name="episodes")
def episodes_flow(config: EpisodesConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns :func:`storage.episodes.read_episodes_reference`'s keys and ``built``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    config = flow_config(EpisodesConfig, config, data_root)
    return build_episodes(config)
