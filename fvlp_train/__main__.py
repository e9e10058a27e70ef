"""Command line for one training run, single process or under torchrun.

    python -m fvlp_train pretrain --config run.json
    torchrun --nproc-per-node 4 -m fvlp_train finetune --config run.json

The JSON file holds a PretrainConfig / FinetuneConfig (unknown keys are rejected). Rerunning
with the same file resumes the run from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from fvlp_core.config import FinetuneConfig, PretrainConfig
from fvlp_train.engine import STAGES, train

CONFIG_MODELS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fvlp_train", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--config", type=Path, required=True, help="resolved config JSON")
    args = parser.parse_args(argv)
    try:
        config = CONFIG_MODELS[args.stage].model_validate(json.loads(args.config.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as err:
        parser.error(f"{args.config}: {err}")
    train(args.stage, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
