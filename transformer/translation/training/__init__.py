"""Training a translation model: one :class:`TrainConfig` in, a trained, evaluated, checkpointed
run out.

``train(config)`` does everything ``train.py`` does, so tests call it in-process, in four steps:

1. :func:`~.run.setup_run`: read and validate the corpus (:mod:`.corpus`), train the shared
   BPE vocabulary on the training split and save it as ``run_dir/tokenizer.json``; build the
   model and optimizer (:mod:`.optimizer`), and restore a checkpoint's position when resuming
   (:mod:`.checkpointing`);
2. :func:`~.loop.train_loop`: train with token-count batches (:mod:`transformer.translation.batching`),
   label-smoothed cross-entropy, AdamW with linear warm-up and then linear decay to zero at the
   end of the budget (default) or inverse-square-root decay (:mod:`.schedules`), gradient clipping
   and bf16 autocast where it pays (:mod:`.devices`), until the budget is spent (:mod:`.budget`);
3. inside it, every ``eval_every`` steps, at each epoch's end and at the end: validation loss,
   sacreBLEU and chrF (:mod:`.scoring`), a checkpoint, ``best.json`` moved when BLEU improves;
   every ``checkpoint_every`` steps a checkpoint; every metric in ``metrics.jsonl`` (:mod:`.metrics`);
4. :func:`~.loop.finish_run`: optionally the average of the last ``average_last`` checkpoints
   (:mod:`.averaging`), which becomes ``best`` when its validation BLEU is higher; the best
   checkpoint's scores on the test split.

Reproducibility and resuming: batch order is a function of ``(seed, epoch)`` and dropout is
re-seeded from ``(seed, step, rank)`` before each step, so the checkpoint's position
(``epoch``, ``batch``, ``step``) plus the weights and optimizer state determine the rest of the
run; ``train(config, resume=True)`` continues it with the same losses an uninterrupted run has.

Data parallel: started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each rank trains
on its own shard of every epoch's batches under DistributedDataParallel (NCCL on CUDA, gloo on
CPU); rank 0 alone evaluates, logs and writes checkpoints.
"""

from transformer.translation.training.config import CONFIG_FILE, TrainConfig
from transformer.translation.training.loop import TrainResult, train
from transformer.translation.training.schedules import SCHEDULES

__all__ = ["CONFIG_FILE", "SCHEDULES", "TrainConfig", "TrainResult", "train"]
