"""Index flow: a fine-tuned checkpoint + an episodes split -> the gallery index `fvlp app` serves.

``fvlp index`` embeds every photo of the split (default: the test photos of the data root's
episodes) with the checkpoint (default: the latest fine-tuning run) and writes
``<data-root>/gallery`` (``storage/gallery.py``). Rebuilding with the same checkpoint embeds
only photos the gallery does not hold yet; a new checkpoint re-embeds them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from fvlp_core.config import IndexConfig, flow_config
from tasks.index import build_gallery


@flow(name="index")
def index_flow(config: IndexConfig | None = None, data_root: Path | None = None) -> dict[str, Any]:
    """Returns ``{"gallery_dir", "photos", "embedded", "kept", "model_fingerprint"}``.

    Args:
        config: The stage's settings; fields left out come from the FVLP_* environment of the
            process running the flow, then the defaults.
        data_root: Folder of every dataset, checkpoint and the results store; wins over
            config's (default: FVLP_DATA_ROOT of the process running the flow, else ./fvlp-data).
    """
    return build_gallery(flow_config(IndexConfig, config, data_root))
