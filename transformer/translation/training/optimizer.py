"""The optimizer: AdamW, weight decay on matrices only."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from transformer.model import Transformer

if TYPE_CHECKING:
    from transformer.translation.training.config import TrainConfig


def make_optimizer(model: Transformer, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases and norm gains)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(0.9, config.beta2),
        eps=1e-9,
    )
