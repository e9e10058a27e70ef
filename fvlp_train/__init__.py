"""Training for both FVLP stages: ``python -m fvlp_train {pretrain,finetune} --config cfg.json``."""

import os

# Before torch loads OpenMP: on a shared or busy CPU, spin-waiting threads starve each
# other (measured 5-7x slower steps on 2 loaded cores); passive waiting costs nothing idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fvlp_train.engine import STAGES, train  # noqa: E402

__all__ = ["STAGES", "train"]
