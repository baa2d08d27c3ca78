"""The run configuration, in one place: the named presets, the model options and
:class:`TrainConfig`, one frozen dataclass that a run is built from and saves as
``run_dir/config.json``; the names of the files a run directory holds.

Every ``train.py`` option is declared here, as a field's metadata
(:func:`transformer.translation.cli.option`: help, argument group, type): the training options on
:class:`TrainConfig`, the model options on :class:`ModelOptions`; ``train.py`` builds its parser
from them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from transformer.config import BACKENDS, SCORES, ModelConfig
from transformer.translation.cli import (
    fraction,
    nonnegative_int,
    option,
    positive_float,
    positive_int,
)
from transformer.translation.data import DEFAULT_DATA_DIR
from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY
from transformer.translation.training.sizing import Sizing

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SCHEDULES = ("inverse-sqrt", "linear-decay")  # learning rates after warm-up (loop.learning_rate)


@dataclass(frozen=True)
class Preset:
    """A named size: the model's shape, and the training options that differ for it from
    :class:`TrainConfig`'s defaults."""

    model: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)


# "cpu" is what 2 CPU cores with bf16 units train to useful BLEU in ~9 minutes: a run that
# short sees ~5 epochs, too few to overfit 29k pairs, so dropout (12% of a CPU step, and slower
# early progress) is off; TrainConfig's defaults are its values. "cpu-small" is for about half
# that compute (a float32-only CPU, or one core): narrower, a smaller vocabulary, SDPA attention
# (faster than naive in float32) and validation only at the end (each one costs steps).
# train.py's "auto" picks one of the two by timing this machine's compute (sizing.py;
# measurements in docs/cpu_sizing.md). "base" is the Transformer-base of Vaswani et al. (2017),
# for a GPU, with the heavier dropout a 60M-parameter model needs on a corpus this small.
PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        model=dict(d_model=256, heads=4, encoder_layers=3, decoder_layers=3, d_ff=512, dropout=0.0)
    ),
    "cpu-small": Preset(
        model=dict(
            d_model=192,
            heads=4,
            encoder_layers=3,
            decoder_layers=3,
            d_ff=384,
            dropout=0.0,
            backend="sdpa",
        ),
        training=dict(vocab_size=4000, eval_at_epoch_end=False),
    ),
    "base": Preset(
        model=dict(
            d_model=512, heads=8, encoder_layers=6, decoder_layers=6, d_ff=2048, dropout=0.3
        ),
        training=dict(
            max_tokens=8192,
            lr=1e-3,
            warmup_steps=1000,
            time_budget=None,
            epochs=60,
            val_beam_size=4,
        ),
    ),
}
DEFAULT_PRESET = "cpu"
DEFAULT_VOCAB_SIZE = 6000


def preset_values(name: str) -> str:
    """``cpu 256, cpu-small 192, base 512``: each preset's value of the model field ``name``."""
    default = {f.name: f.default for f in dataclasses.fields(ModelConfig)}[name]
    return ", ".join(f"{p} {preset.model.get(name, default)}" for p, preset in PRESETS.items())


def training_preset_values(name: str, default: Any) -> str:
    """``cpu 2048, cpu-small 2048, base 8192``: each preset's value of the TrainConfig field
    ``name`` whose default is ``default`` (None reads "none"); a help text's ``{presets}``."""
    values = (preset.training.get(name, default) for preset in PRESETS.values())
    return ", ".join(
        f"{p} {'none' if value is None else value}"
        for p, value in zip(PRESETS, values, strict=True)
    )


def default_model() -> ModelConfig:
    """The default preset's model; its vocabulary sizes are placeholders (see TrainConfig)."""
    vocab = DEFAULT_VOCAB_SIZE
    return ModelConfig(vocab, vocab, **PRESETS[DEFAULT_PRESET].model)


@dataclass(frozen=True)
class ModelOptions:
    """The ``train.py`` options that shape the model: :class:`ModelConfig` fields, each None
    when not given (the preset's value, or ModelConfig's default, applies)."""

    backend: str | None = field(
        default=None,
        metadata=option(
            f"attention backend for the whole model ({preset_values('backend')})",
            "model",
            flag="--attention",
            choices=BACKENDS,
        ),
    )
    score: str | None = field(
        default=None,
        metadata=option("attention score function (default scaled_dot)", "model", choices=SCORES),
    )
    d_model: int | None = field(
        default=None,
        metadata=option(f"model width ({preset_values('d_model')})", "model", type=positive_int),
    )
    heads: int | None = field(
        default=None,
        metadata=option(
            f"attention heads; must divide --d-model ({preset_values('heads')})",
            "model",
            type=positive_int,
        ),
    )
    encoder_layers: int | None = field(
        default=None,
        metadata=option(
            f"encoder layers ({preset_values('encoder_layers')})", "model", type=nonnegative_int
        ),
    )
    decoder_layers: int | None = field(
        default=None,
        metadata=option(
            f"decoder layers ({preset_values('decoder_layers')})", "model", type=nonnegative_int
        ),
    )
    d_ff: int | None = field(
        default=None,
        metadata=option(
            f"feed-forward width ({preset_values('d_ff')})", "model", type=positive_int
        ),
    )
    dropout: float | None = field(
        default=None,
        metadata=option(
            f"residual/embedding dropout ({preset_values('dropout')})", "model", type=fraction
        ),
    )
    attention_dropout: float | None = field(
        default=None,
        metadata=option(
            "dropout on attention probabilities (default 0; not with --score additive on triton)",
            "model",
            type=fraction,
        ),
    )
    tie_embeddings: bool | None = field(
        default=None,
        metadata=option(
            "separate source/target embeddings and output layer",
            "model",
            flag="--no-tie-embeddings",
            action="store_false",
        ),
    )

    def given(self) -> dict[str, Any]:
        """The options that were given: ModelConfig field -> value."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``run_dir/config.json``.

    ``model``'s vocabulary sizes are placeholders until the tokenizer is trained: the run uses
    the tokenizer's actual size (about ``vocab_size``: fewer on a small corpus, never fewer
    than the tokenizer's alphabet), which the run's ``config.json`` records.
    """

    model: ModelConfig = field(default_factory=default_model)
    # data
    data: str = field(
        default=str(DEFAULT_DATA_DIR),
        metadata=option(
            "corpus directory: <split>.<lang>[.gz] text files or a datasets save_to_disk "
            "directory, with splits train, val and the test split",
            "data",
        ),
    )
    src_lang: str = field(default="de", metadata=option("source language suffix / column", "data"))
    tgt_lang: str = field(default="en", metadata=option("target language suffix / column", "data"))
    test_split: str = field(
        default="test_2016_flickr", metadata=option("split scored at the end", "data")
    )
    vocab_size: int = field(
        default=DEFAULT_VOCAB_SIZE,
        metadata=option(
            "shared BPE vocabulary size ({presets})",
            "data",
            type=positive_int,
            default=None,
        ),
    )
    max_length: int = field(
        default=128,
        metadata=option(
            "training pairs with a side longer than this many tokens are skipped",
            "data",
            type=positive_int,
        ),
    )
    train_limit: int | None = field(
        default=None,
        metadata=option("use only the first N training pairs", "data", type=positive_int),
    )
    val_limit: int | None = field(
        default=None,
        metadata=option("use only the first N validation pairs", "data", type=positive_int),
    )
    # run
    run_dir: str | None = None
    seed: int = field(
        default=1,
        metadata=option("seed of initialization, batch order and dropout", "run", type=int),
    )
    device: str = field(
        default="auto", metadata=option("auto (CUDA if present), cpu, cuda, cuda:1, ...", "run")
    )
    amp: str = field(
        default="auto",
        metadata=option(
            "bf16 autocast; auto: on for CUDA and for CPUs with bf16 units",
            "run",
            choices=["auto", "on", "off"],
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=option(
            "CPU threads for PyTorch (default: PyTorch's choice)", "run", type=positive_int
        ),
    )
    progress: bool = field(
        default=True,
        metadata=option("no progress bar", "run", flag="--no-progress", action="store_false"),
    )
    compile: bool = field(
        default=False,
        metadata=option(
            "torch.compile the model for training steps (one graph for every batch shape; "
            "compiling takes about a minute on 2 CPU cores, counted in the time budget: see "
            "docs/training.md for when it pays)",
            "run",
            action="store_true",
        ),
    )
    kernel_warmup: bool = field(
        default=True,
        metadata=option(
            "do not compile the attention kernels before the time budget starts (with "
            "--attention triton on a GPU, the run first compiles every kernel specialisation it "
            "will launch, on all CPU cores, outside the budget: see docs/training.md)",
            "run",
            flag="--no-kernel-warmup",
            action="store_false",
        ),
    )
    sizing: Sizing | None = None  # how --config auto chose the size (None: it did not choose)
    # optimization; "{presets}" in a help text: each preset's value (training_preset_values)
    max_tokens: int = field(
        default=2048,
        metadata=option(
            "padded tokens per batch ({presets})",
            "optimization",
            type=positive_int,
            default=None,
        ),
    )
    lr: float = field(
        default=2.5e-3,
        metadata=option(
            "peak learning rate ({presets})",
            "optimization",
            type=positive_float,
            default=None,
        ),
    )
    warmup_steps: int = field(
        default=150,
        metadata=option(
            "linear warm-up steps, then the --schedule's decay ({presets})",
            "optimization",
            type=nonnegative_int,
            default=None,
        ),
    )
    beta2: float = 0.98
    weight_decay: float = field(
        default=0.01,
        metadata=option("AdamW weight decay (matrices only)", "optimization", type=float),
    )
    label_smoothing: float = field(
        default=0.1,
        metadata=option("label smoothing of the training loss", "optimization", type=fraction),
    )
    clip_norm: float = field(
        default=1.0,
        metadata=option("gradient-norm clip; 0 turns it off", "optimization", type=float),
    )
    schedule: str = field(
        default="linear-decay",
        metadata=option(
            "learning rate after warm-up: inverse-sqrt (peak·√(warmup/step)) or linear-decay "
            "(straight down to zero as the budget ends: the time budget, following elapsed "
            "training time, or --max-steps / --epochs, whichever ends first; default: "
            "%(default)s)",
            "optimization",
            choices=SCHEDULES,
        ),
    )
    epochs: int = field(
        default=100,
        metadata=option(
            "maximum epochs ({presets})",
            "optimization",
            type=positive_int,
            default=None,
        ),
    )
    max_steps: int | None = field(
        default=None,
        metadata=option("stop after this many optimizer steps", "optimization", type=positive_int),
    )
    time_budget: float | None = field(
        default=9.0,
        metadata=option(
            "minutes for the training loop incl. validation ({presets})",
            "optimization",
            type=positive_float,
            default=None,
        ),
    )
    # evaluation and checkpoints
    eval_every: int = field(
        default=0,
        metadata=option(
            "validate (loss, BLEU, checkpoint) every N steps; 0: at epoch ends only",
            "evaluation",
            type=nonnegative_int,
            default=None,
        ),
    )
    eval_at_epoch_end: bool = field(
        default=True,
        metadata=option(
            "do not validate at each epoch's end (only every --eval-every steps and at the end; "
            "cpu-small's default)",
            "evaluation",
            flag="--no-epoch-eval",
            action="store_false",
        ),
    )
    checkpoint_every: int = field(
        default=200,
        metadata=option(
            "checkpoint every N steps (0: only at validations)",
            "evaluation",
            type=nonnegative_int,
        ),
    )
    log_every: int = field(
        default=10,
        metadata=option("log training metrics every N steps", "evaluation", type=positive_int),
    )
    beam_size: int = field(
        default=4,
        metadata=option("beam size for the test set; 1 = greedy", "evaluation", type=positive_int),
    )
    length_penalty: float = field(
        default=DEFAULT_LENGTH_PENALTY,
        metadata=option("GNMT length penalty alpha for beam search", "evaluation", type=float),
    )
    val_beam_size: int = field(
        default=1,
        metadata=option(
            "beam size for validation BLEU during training, which chooses the best checkpoint "
            "({presets}; 1: greedy, the fastest)",
            "evaluation",
            type=positive_int,
            default=None,
        ),
    )
    average_last: int = field(
        default=0,
        metadata=option(
            "keep the last N checkpoints, average their weights at the end, validate the "
            "average and make it the best checkpoint when its BLEU is higher (0 or 1: off)",
            "evaluation",
            type=nonnegative_int,
        ),
    )
    final_test: bool = field(
        default=True,
        metadata=option(
            "skip the test-set BLEU at the end",
            "evaluation",
            flag="--no-final-test",
            action="store_false",
        ),
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # nan and inf pass every comparison check below
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        positive = (
            "vocab_size",
            "max_length",
            "max_tokens",
            "epochs",
            "log_every",
            "beam_size",
            "val_beam_size",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "val_limit", "max_steps", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 when given, got {value}")
        for name in (
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "average_last",
            "weight_decay",
            "clip_norm",
            "length_penalty",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget must be positive minutes, got {self.time_budget}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp must be auto, on or off, got {self.amp!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError as err:
                raise ValueError(f"bad device {self.device!r}: {err}") from None
        for name in ("src_lang", "tgt_lang"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must name a language, got {getattr(self, name)!r}")
        if self.src_lang == self.tgt_lang:
            raise ValueError(
                f"src_lang and tgt_lang are both {self.src_lang!r}: that would train a model "
                "to copy its input; give two different languages"
            )
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"max_tokens ({self.max_tokens}) must be >= max_length ({self.max_length})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`; raises ``ValueError`` on unknown or invalid fields."""
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig is a JSON object, got {type(d).__name__}")
        for name, kind in (("model", ModelConfig), ("sizing", Sizing)):
            value = d.get(name)
            if value is not None and not isinstance(value, dict | kind):
                raise ValueError(f"{name} must be an object, got {type(value).__name__}")
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        if isinstance(d.get("model"), dict):
            d["model"] = ModelConfig(**d["model"])
        if isinstance(d.get("sizing"), dict):
            d["sizing"] = Sizing(**d["sizing"])
        return cls(**d)


# Options that may change when a run is resumed: how long it goes on and how it reports.
RESUMABLE = frozenset(
    {
        "max_steps",
        "time_budget",
        "epochs",
        "progress",
        "device",
        "threads",
        "compile",
        "kernel_warmup",
        "final_test",
        "checkpoint_every",
        "log_every",
    }
)


def config_from_preset(
    preset: str, model_options: dict[str, Any], options: dict[str, Any]
) -> TrainConfig:
    """The TrainConfig of ``preset``: its model and training values, then the explicit
    ``model_options`` (ModelConfig fields) and ``options`` (TrainConfig fields) over them. A
    preset's SDPA backend gives way to naive attention under the additive score, which SDPA
    cannot compute (an explicit backend is kept, and refused there by ModelConfig)."""
    chosen = PRESETS[preset]
    kwargs = {**chosen.training, **options}
    vocab = kwargs.get("vocab_size", DEFAULT_VOCAB_SIZE)
    model_values = {**chosen.model, **model_options}
    preset_sdpa = model_values.get("backend") == "sdpa" and "backend" not in model_options
    if preset_sdpa and model_values.get("score") == "additive":
        model_values["backend"] = "naive"  # SDPA cannot compute the additive score
    model = ModelConfig(vocab, vocab, **model_values)
    return TrainConfig(model=model, **kwargs)
