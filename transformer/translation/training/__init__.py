"""Training a translation model: one :class:`TrainConfig` in, a trained, evaluated, checkpointed
run out. A reader follows a run top to bottom through :mod:`.config`, :mod:`.loop` (with
:mod:`.setup`) and :mod:`.resume`:

1. :mod:`.config`: the presets, the model options and :class:`TrainConfig` (every ``train.py``
   option is a field's metadata there); :mod:`.sizing` is how ``--config auto`` picks a preset;
2. :mod:`.loop`: ``train(config)``, which does everything ``train.py`` does (tests call it
   in-process): it sets the run up with :mod:`.setup` (device and rank, run directory, corpus and
   the shared BPE vocabulary, model and AdamW optimizer), compiles the attention kernels the run
   will launch before the budget's clock starts (:mod:`.warmup`, with the triton backend on a
   GPU; autotuning's choices kept on disk), then trains with token-count batches
   (:mod:`transformer.translation.batching`), label-smoothed cross-entropy, linear warm-up and
   then linear decay to zero at the end of the budget (default) or inverse-square-root decay,
   gradient clipping and bf16 autocast where it pays, until the time or step budget is spent or
   SIGTERM/SIGINT asks it to stop; every ``eval_every`` steps, at each epoch's end and at the
   end it validates (loss, sacreBLEU, chrF: :mod:`transformer.translation.evaluation`) and
   checkpoints, ``best.json`` moving when BLEU improves; every metric goes to ``metrics.jsonl``
   (:mod:`.metrics`); at the end it averages the last ``average_last`` checkpoints (the average
   becomes ``best`` when its validation BLEU is higher) and scores the best on the test split;
3. :mod:`.resume`: where a run stands (:class:`~.resume.TrainState`), saved with every
   checkpoint and restored to resume (the files: :mod:`transformer.translation.checkpoint`).

Reproducibility and resuming: batch order is a function of ``(seed, epoch)`` and dropout is
re-seeded from ``(seed, step, rank)`` before each step, so the checkpoint's position
(``epoch``, ``batch``, ``step``) plus the weights and optimizer state determine the rest of the
run; ``train(config, resume=True)`` continues it with the same losses and final weights an
uninterrupted run has, after a kill or after a stop request.

Data parallel: started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each rank trains
on its own shard of every epoch's batches under DistributedDataParallel (NCCL on CUDA, gloo on
CPU); rank 0 alone evaluates, logs and writes checkpoints; a stop request on any rank stops all
of them at the same step.
"""

from transformer.translation.training.config import CONFIG_FILE, SCHEDULES, TrainConfig
from transformer.translation.training.loop import StopRequest, TrainResult, exit_status, train

__all__ = [
    "CONFIG_FILE",
    "SCHEDULES",
    "StopRequest",
    "TrainConfig",
    "TrainResult",
    "exit_status",
    "train",
]
