"""Image-grounded text encoder for image-text matching (ITM).

BLIP-style: it reuses the text encoder's self-attention blocks and interleaves one
cross-attention block per layer that attends to the image's patch tokens; a binary head
on the end-of-text token says whether text and image match.

Two choices keep the head from sitting at its 1-in-3 positive prior when it trains from
random weights (measured in the README: loss 0.637 throughout pretraining without them):
the matching loss trains the cross-attention blocks, the head and (through the patch
tokens) the image tower but reads the shared text tower's weights detached (its gradients
there, at the contrastive learning rate, collapse the head; the contrastive loss trains the
text tower), and its negatives can be drawn uniformly instead of by similarity
(``hardness``): hard negatives differ from the positive in an attribute or two, too fine a
difference for an untrained matcher to learn from in a short run.
"""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.func import functional_call

from fvlp_core.models.factory import causal_text_input
from fvlp_core.models.losses import matching_loss, sample_hard_negatives


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

    def forward(
        self,
        backbone: open_clip.CLIP,
        text: torch.Tensor,
        image_tokens: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Match logits [R, 2] for ``text`` ids [R, L] against ``image_tokens`` [M, N, image_width]:
        row r's image is ``image_index[r]`` (default: row r's own, M = R). An image shared by
        several rows is projected once per layer."""
        x, mask = causal_text_input(backbone, text, detached=True)
        image = self.image_proj(image_tokens)
        for self_block, cross_block in zip(backbone.transformer.resblocks, self.cross_blocks):
            x = functional_call(self_block, _detached(self_block), (x,), {"attn_mask": mask})
            x = _cross_attend(cross_block, x, image, image_index)
        x = self.ln_final(x)
        # The causal text encoder's end-of-text token (highest id) has seen the whole caption.
        pooled = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return self.head(pooled)

    def hard_negative_loss(
        self,
        backbone: open_clip.CLIP,
        text: torch.Tensor,
        image_tokens: torch.Tensor,
        similarity: torch.Tensor,
        groups: torch.Tensor,
        seed: int,
        hardness: float,
    ) -> torch.Tensor:
        """ITM over each pair, its image with a negative caption and its caption with a negative
        image, drawn by ``similarity`` [B, B] (image x text, no gradient) to the degree
        ``hardness`` (0: uniformly), never from the same caption ``groups``; ``seed`` makes the
        draw replayable on resume."""
        generator = torch.Generator(device=similarity.device).manual_seed(seed)
        same = groups[:, None] == groups[None, :]
        negative_text = sample_hard_negatives(similarity, same, generator, hardness)
        negative_image = sample_hard_negatives(similarity.T, same, generator, hardness)
        rows = torch.arange(text.shape[0], device=text.device)
        logits = self(
            backbone,
            torch.cat([text, text[negative_text], text]),
            image_tokens,
            image_index=torch.cat([rows, rows, negative_image]),
        )
        return matching_loss(logits, positives=text.shape[0])


def _detached(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in module.named_parameters()}


def _cross_attend(
    block: ResidualAttentionBlock, x: torch.Tensor, image: torch.Tensor, image_index: torch.Tensor | None
) -> torch.Tensor:
    """``block``'s cross-attention step (open_clip's ``block(x, k_x=image, v_x=image)``, same
    weights and math) with keys and values computed once per image and then gathered per row:
    nn.MultiheadAttention would project every row's copy of its image, and its batch-first
    cross-attention path copies every input to sequence-first layout."""
    attn = block.attn
    width, heads = attn.embed_dim, attn.num_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    image = block.ln_1_kv(image)
    keys, values = F.linear(image, w_k, b_k), F.linear(image, w_v, b_v)
    if image_index is not None:
        keys, values = keys.index_select(0, image_index), values.index_select(0, image_index)
    queries = F.linear(block.ln_1(x), w_q, b_q)

    def split_heads(y: torch.Tensor) -> torch.Tensor:  # [R, S, width] -> [R, heads, S, width / heads]
        return y.unflatten(-1, (heads, width // heads)).transpose(1, 2)

    attended = F.scaled_dot_product_attention(split_heads(queries), split_heads(keys), split_heads(values))
    x = x + block.ls_1(attn.out_proj(attended.transpose(1, 2).flatten(2)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
