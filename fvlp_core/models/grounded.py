"""Image-grounded text encoder for image-text matching (ITM).

BLIP-style: it reuses the text encoder's self-attention blocks and interleaves one
cross-attention block per layer that attends to the image's patch tokens; a binary head
on the end-of-text token says whether text and image match.
"""

from __future__ import annotations

import open_clip
import torch
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class ImageGroundedTextEncoder(nn.Module):
    def __init__(self, text_width: int, text_heads: int, text_layers: int, image_width: int):
        super().__init__()
        self.image_proj = nn.Linear(image_width, text_width)
        self.cross_blocks = nn.ModuleList(
            ResidualAttentionBlock(text_width, text_heads, is_cross_attention=True) for _ in range(text_layers)
        )
        self.ln_final = nn.LayerNorm(text_width)
        self.head = nn.Linear(text_width, 2)

    @classmethod
    def for_backbone(cls, backbone: open_clip.CLIP) -> ImageGroundedTextEncoder:
        blocks = backbone.transformer.resblocks
        return cls(
            text_width=backbone.transformer.width,
            text_heads=blocks[0].attn.num_heads,
            text_layers=len(blocks),
            image_width=backbone.visual.transformer.width,
        )

    def forward(self, backbone: open_clip.CLIP, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Match logits [B, 2] for ``text`` ids [B, L] against ``image_tokens`` [B, N, image_width]."""
        cast_dtype = backbone.transformer.get_cast_dtype()
        x = backbone.token_embedding(text).to(cast_dtype) + backbone.positional_embedding.to(cast_dtype)
        image = self.image_proj(image_tokens)
        for self_block, cross_block in zip(backbone.transformer.resblocks, self.cross_blocks):
            x = self_block(x, attn_mask=backbone.attn_mask)
            x = cross_block(x, k_x=image, v_x=image)
        x = self.ln_final(x)
        # The causal text encoder's end-of-text token (highest id) has seen the whole caption.
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return self.head(pooled)
