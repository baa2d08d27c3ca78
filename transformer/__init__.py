"""A from-scratch Transformer encoder-decoder with a pluggable attention core.

The attention core (:func:`transformer.attention.attend`) runs on the naive einops math, on
PyTorch's SDPA (a peer and test oracle), or on this project's Triton flash-attention kernel.
"""

from .attention import MultiHeadAttention, attend, attention_weights
from .config import ModelConfig
from .decoding import beam_search, greedy_decode
from .model import Transformer

__all__ = [
    "ModelConfig",
    "MultiHeadAttention",
    "Transformer",
    "attend",
    "attention_weights",
    "beam_search",
    "greedy_decode",
]
