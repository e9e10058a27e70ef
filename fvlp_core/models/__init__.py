"""FVLP models on open_clip backbones: pretraining (ITC + ITM) and fusion fine-tuning."""
from fvlp_core.models.factory import create_backbone, fusion_layer_indices, get_tokenizer
from fvlp_core.models.fusion import FVLPFusion, MultiScaleFusion
from fvlp_core.models.pretrain import FVLPPretrain

__all__ = ["FVLPFusion", "FVLPPretrain", "MultiScaleFusion", "create_backbone", "fusion_layer_indices", "get_tokenizer"]
