"""The training loop: train until the budget or the epochs run out, validating and
checkpointing on the way, then finish the run (average, test)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from transformer.model import Transformer, mark_dynamic_batch
from transformer.translation.batching import Batch, batch_indices, make_batch, shard
from transformer.translation.checkpoint import atomic_write_json
from transformer.translation.evaluation import autocast
from transformer.translation.tokenizer import PAD_ID
from transformer.translation.training import budget
from transformer.translation.training.averaging import average_last_checkpoints
from transformer.translation.training.budget import StopRequest, check_budget
from transformer.translation.training.checkpointing import save
from transformer.translation.training.config import TrainConfig
from transformer.translation.training.run import Run, setup_run
from transformer.translation.training.schedules import learning_rate
from transformer.translation.training.scoring import score_best_on_test, validate


@dataclass
class TrainResult:
    """What a finished :func:`train` returns (on every rank; metrics only on rank 0)."""

    run_dir: Path
    model: Transformer
    step: int
    losses: list[float]
    metrics: dict[str, float]
    stopped: bool = False  # by a stop request: the run is checkpointed, not finished


def train(
    config: TrainConfig, resume: bool = False, stop: StopRequest | None = None
) -> TrainResult:
    """Run training as ``config`` says; with ``resume``, continue ``config.run_dir`` from its last
    checkpoint. When ``stop`` is requested (:meth:`StopRequest.on_signals`: by SIGTERM or SIGINT)
    the run stops after the current step with a checkpoint, unfinished (``stopped``)."""
    started = time.time()
    stop = stop or StopRequest()
    run = setup_run(config, resume, started)  # 1. data, vocabulary, model, optimizer, position
    losses, stopped = train_loop(run, stop)  # 2., 3. train, validate, checkpoint
    finish = run.dist.is_main and not stopped
    metrics = finish_run(run, started) if finish else {}  # 4. average, test
    if run.dist.enabled:
        dist.barrier()
    loss_values = torch.stack(losses).tolist() if losses else []
    return TrainResult(
        run_dir=run.run_dir,
        model=run.model,
        step=run.state.step,
        losses=loss_values,
        metrics=metrics,
        stopped=stopped,
    )


def train_loop(run: Run, stop: StopRequest) -> tuple[list[torch.Tensor], bool]:
    """Train until the budget or the epochs run out, or a stop is requested; validate and
    checkpoint on the way. The step losses, and whether a stop request ended the loop."""
    config, state = run.config, run.state
    losses: list[torch.Tensor] = []  # left on the device: read back only when logged
    last_eval_step = -1
    saved_step = state.step if state.step > 0 else -1  # a resumed run's checkpoint
    throughput = Throughput()
    run.model.train()
    done, stopping = check_budget(run, stop)
    while not (done or stopping) and state.epoch < config.epochs:
        batches = epoch_batches(run)
        bar = progress_bar(run, len(batches))
        while state.next_batch < len(batches):
            step_start = budget.clock()
            loss, lr, tokens = train_step(run, batches[state.next_batch], len(batches))
            losses.append(loss)
            throughput.add(tokens)
            bar.update(1)
            if state.step % config.log_every == 0:
                log_training(run, bar, loss, lr, throughput)
            end_of_epoch = state.next_batch == len(batches)
            if end_of_epoch:
                state.epoch, state.next_batch = state.epoch + 1, 0
            state.train_time += budget.clock() - step_start
            done, stopping = check_budget(run, stop)
            periodic = config.eval_every and state.step % config.eval_every == 0
            if done or (end_of_epoch and config.eval_at_epoch_end) or periodic:
                eval_start = budget.clock()
                val = validate(run)
                state.train_time += budget.clock() - eval_start
                # The validation may have spent the budget: stop now rather than train one
                # more step and validate it again. Checked before saving, so that a resumed
                # run's clock (and schedule) counts the validation too. The check is monotone
                # (same step, train_time only grew): a run that was done stays done.
                done, stopping = check_budget(run, stop)
                save(run, val)
                last_eval_step = saved_step = state.step
                throughput.restart()
            elif config.checkpoint_every and state.step % config.checkpoint_every == 0:
                save(run, None)
                saved_step = state.step
            if done or end_of_epoch or stopping:
                break
        bar.close()
    if stopping:
        if saved_step != state.step:
            save(run, None)  # the position to resume from; no validation, to stop soon
        return losses, True
    if last_eval_step != state.step and run.dist.is_main:
        save(run, validate(run))  # e.g. resumed at the very end: make sure 'last' exists
    return losses, False


def train_step(
    run: Run, group: list[int], batches_in_epoch: int
) -> tuple[torch.Tensor, float, int]:
    """One optimizer step on the training pairs ``group``: (loss on the device, lr, tokens)."""
    config, state, dist_info = run.config, run.state, run.dist
    cpu_batch: Batch = make_batch(
        [run.train_corpus.src[i] for i in group], [run.train_corpus.tgt[i] for i in group]
    )
    # Counted on the host copy: counting on the GPU would sync the device every step.
    tokens = int((cpu_batch.src != PAD_ID).sum()) + cpu_batch.num_tgt_tokens
    batch = cpu_batch.to(run.device)
    state.step += 1
    lr = learning_rate(config, state, batches_in_epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    torch.manual_seed(config.seed * 1_000_003 + state.step * dist_info.world_size + dist_info.rank)
    if config.compile:
        mark_dynamic_batch(batch.src, batch.tgt_in)  # one graph for every batch shape
    with autocast(run.device, run.amp):
        logits = run.train_model(batch.src, batch.tgt_in)
    loss = label_smoothed_loss(logits, batch.tgt_out, config.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_norm)
    run.optimizer.step()
    state.next_batch += 1
    return loss.detach(), lr, tokens


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """Mean label-smoothed cross-entropy over non-pad targets; logits (b, t, v), target (b, t)."""
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        target.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=smoothing,
    )


def epoch_batches(run: Run) -> list[list[int]]:
    """This rank's batches of the current epoch (a function of seed and epoch)."""
    config = run.config
    lengths = run.train_corpus.lengths()
    batches = batch_indices(lengths, config.max_tokens, config.seed, run.state.epoch)
    return shard(batches, run.dist.rank, run.dist.world_size)


def progress_bar(run: Run, total: int) -> tqdm:
    return tqdm(
        total=total,
        initial=run.state.next_batch,
        desc=f"epoch {run.state.epoch}",
        disable=not (run.dist.is_main and run.config.progress),
        dynamic_ncols=True,
        leave=False,
    )


class Throughput:
    """Training tokens per second over the steps since the last log (validations left out)."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.tokens, self.start = 0, time.time()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def per_second(self) -> float:
        return self.tokens / max(time.time() - self.start, 1e-9)


def log_training(
    run: Run, bar: tqdm, loss: torch.Tensor, lr: float, throughput: Throughput
) -> None:
    loss_value = loss.item()
    tok_s = throughput.per_second() * run.dist.world_size
    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}")
    state = run.state
    run.log.log(
        split="train",
        step=state.step,
        epoch=state.epoch,
        loss=loss_value,
        lr=lr,
        tokens_per_s=tok_s,
    )
    throughput.restart()


def finish_run(run: Run, started: float) -> dict[str, float]:
    """Rank 0: average the last checkpoints (if asked), score the best on the test split, write
    ``results.json``; the metrics."""
    config = run.config
    metrics: dict[str, float] = {"train_time": run.state.train_time, "steps": run.state.step}
    if config.average_last > 1:
        metrics.update(average_last_checkpoints(run))
    if config.final_test:
        metrics.update(score_best_on_test(run))
    metrics["wall_seconds"] = time.time() - started
    atomic_write_json(run.run_dir / "results.json", metrics)
    run.log.plot()
    return metrics
