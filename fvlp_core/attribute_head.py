"""A small MLP predicting the 40 facial attributes from aligned face crops.

Used when a sample has no ground-truth attributes: trained in the pipeline on the
crops that do have them (the embedded corpus), then applied to the rest. As in
FaceCaption-15M, only labels predicted with probability above a threshold (0.85)
are kept for the template caption.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from fvlp_core.attributes import ATTRIBUTE_INDEX, ATTRIBUTES

INPUT_SIZE = 32  # aligned crops put eyes, mouth and hair at fixed pixels, so a coarse view suffices


class AttributeHead(nn.Module):
    """An MLP on the aligned crop's pixels: trains in seconds on a CPU, and alignment does the heavy lifting."""

    def __init__(self, n_attributes: int = len(ATTRIBUTES), hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * INPUT_SIZE * INPUT_SIZE, hidden),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, n_attributes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def crops_to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """RGB uint8 crops of any square size -> normalised ``(N, 3, 32, 32)`` float tensor."""
    small = np.stack([cv2.resize(c, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA) for c in crops])
    tensor = torch.from_numpy(small).permute(0, 3, 1, 2).float().div_(255.0)
    return (tensor - 0.5) / 0.25


def labels_matrix(attribute_lists: list[list[str]]) -> np.ndarray:
    """Attribute-name lists -> ``(N, 40)`` 0/1 matrix."""
    labels = np.zeros((len(attribute_lists), len(ATTRIBUTES)), dtype=np.float32)
    for row, names in enumerate(attribute_lists):
        labels[row, [ATTRIBUTE_INDEX[n] for n in names]] = 1.0
    return labels


def train_attribute_head(
    crops: list[np.ndarray], attribute_lists: list[list[str]], epochs: int, seed: int = 0, batch_size: int = 32
) -> AttributeHead:
    """Multi-label BCE training with horizontal-flip augmentation (faces are near-symmetric)."""
    if len(crops) < 2:
        raise ValueError(f"the attribute head needs at least 2 crops with ground truth, got {len(crops)}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    images = crops_to_tensor(crops)
    targets = torch.from_numpy(labels_matrix(attribute_lists))
    model = AttributeHead()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = epochs * max(1, -(-len(images) // batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            index = order[start : start + batch_size]
            batch = images[index]
            flip = torch.rand(len(index), generator=generator) < 0.5
            batch[flip] = batch[flip].flip(-1)
            loss = loss_fn(model(batch), targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


@torch.no_grad()
def predict_probabilities(model: AttributeHead, crops: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    model.eval()
    if not crops:
        return np.zeros((0, len(ATTRIBUTES)), dtype=np.float32)
    out = [torch.sigmoid(model(crops_to_tensor(crops[i : i + batch_size]))) for i in range(0, len(crops), batch_size)]
    return torch.cat(out).numpy()


def confident_attributes(probabilities: np.ndarray, min_prob: float) -> tuple[list[list[str]], list[bool | None]]:
    """Names predicted above ``min_prob``, and the gender when ``Male`` is confident either way."""
    names = [[ATTRIBUTES[j] for j in np.flatnonzero(row > min_prob)] for row in probabilities]
    male_p = probabilities[:, ATTRIBUTE_INDEX["Male"]] if len(probabilities) else np.zeros(0)
    male = [True if p > min_prob else False if p < 1.0 - min_prob else None for p in male_p]
    return names, male


def save_attribute_head(model: AttributeHead, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": model.state_dict(), "attributes": list(ATTRIBUTES), "input_size": INPUT_SIZE}, tmp)
    tmp.replace(path)
    return path


def load_attribute_head(path: Path) -> AttributeHead:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("attributes") != list(ATTRIBUTES):
        raise ValueError(f"{path}: attribute head trained on a different attribute vocabulary")
    model = AttributeHead()
    model.load_state_dict(payload["state_dict"])
    return model.eval()
