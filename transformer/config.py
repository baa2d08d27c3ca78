"""The model's one configuration object, passed whole to every module."""

from __future__ import annotations

from dataclasses import asdict, dataclass

BACKENDS = ("naive", "sdpa", "triton")
SCORES = ("scaled_dot", "dot", "general", "additive")
INT_FIELDS = (
    "src_vocab_size", "tgt_vocab_size", "d_model", "heads", "encoder_layers", "decoder_layers",
    "d_ff", "pad_id",
)  # fmt: skip


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the encoder-decoder.

    ``backend`` picks the scaled dot-product core (``naive`` einops math, PyTorch ``sdpa`` as a
    peer/oracle, or our ``triton`` kernel); ``score`` picks how queries meet keys (see
    :mod:`transformer.attention`). ``tie_embeddings`` shares one matrix between the source and
    target embeddings and the output layer, which needs one shared vocabulary.
    """

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    norm_first: bool = True
    tie_embeddings: bool = True
    score: str = "scaled_dot"
    backend: str = "naive"
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, got {value!r}")
        for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "heads", "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("encoder_layers", "decoder_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"unknown attention backend {self.backend!r}; choose one of {BACKENDS}"
            )
        if self.score not in SCORES:
            raise ValueError(f"unknown score function {self.score!r}; choose one of {SCORES}")
        if self.score == "additive" and self.backend == "sdpa":
            raise ValueError(
                "the additive (Bahdanau) score is not a dot product, so SDPA cannot compute it; "
                "use backend='naive' or 'triton' (the fused additive kernel)"
            )
        if self.attention_dropout > 0 and self.backend == "triton" and self.score == "additive":
            raise ValueError(
                "the fused additive kernel (score 'additive', backend 'triton') does not apply "
                "dropout to attention probabilities; set attention_dropout=0 or use backend "
                "'naive'"
            )
        if self.tie_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(
                "tie_embeddings needs one shared vocabulary, but src_vocab_size="
                f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}"
            )
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def to_dict(self) -> dict:
        return asdict(self)
