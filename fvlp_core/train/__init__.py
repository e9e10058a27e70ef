"""Training for both FVLP stages: ``python -m fvlp_core.train {pretrain,finetune} --config cfg.json``."""
from fvlp_core.train.engine import STAGES, train

__all__ = ["STAGES", "train"]
