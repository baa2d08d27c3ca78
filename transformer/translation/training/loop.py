"""The training loop, top to bottom: :func:`train` sets a run up (:mod:`.setup`), compiles its
kernels before the budget's clock starts (:mod:`.warmup`: the triton backend on a GPU), trains until
the budget or the epochs run out or a stop is requested, validating and checkpointing on the
way, and finishes it (averaging, the test split). Below it: one step, the learning-rate
schedule, when to stop (the budget, SIGTERM and SIGINT), validation, the run's end, and
progress reports."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from transformer.model import Transformer, mark_dynamic_batch
from transformer.translation.average import save_average
from transformer.translation.batching import Batch, batch_indices, make_batch, shard
from transformer.translation.checkpoint import (
    atomic_write_json,
    load_checkpoint,
    load_recent,
    point,
)
from transformer.translation.data import Corpus, CorpusError, encode_split
from transformer.translation.devices import autocast
from transformer.translation.evaluation import evaluate
from transformer.translation.tokenizer import PAD_ID
from transformer.translation.training import warmup
from transformer.translation.training.config import TrainConfig
from transformer.translation.training.metrics import MetricsLog
from transformer.translation.training.resume import TrainState, restore_run, save_run
from transformer.translation.training.setup import (
    Data,
    Process,
    build_model,
    open_run_dir,
    prepare_data,
    read_splits,
    record_vocabulary,
    run_directory,
    setup_process,
    training_module,
)


@dataclass
class TrainResult:
    """What a finished :func:`train` returns (on every rank; metrics only on rank 0)."""

    run_dir: Path
    model: Transformer
    step: int
    losses: list[float]
    metrics: dict[str, float | bool]
    stopped: bool = False  # by a stop request: the run is checkpointed, not finished


def train(
    config: TrainConfig, resume: bool = False, stop: StopRequest | None = None
) -> TrainResult:
    """Run training as ``config`` says; with ``resume``, continue ``config.run_dir`` from its last
    checkpoint. When ``stop`` is requested (:meth:`StopRequest.on_signals`: by SIGTERM or SIGINT)
    the run stops after the current step with a checkpoint, unfinished (``stopped``)."""
    started = time.time()
    # 1. Set up: device and rank, run directory, corpus and vocabulary, model, position.
    process = setup_process(config)
    run_dir = run_directory(config, process, resume)
    splits = read_splits(config, process.is_main)  # bad data fails here: no directory yet
    with ExitStack() as held:
        if process.is_main:  # the run directory is this process's until the run ends
            held.enter_context(open_run_dir(run_dir, config, resume))
        data = prepare_data(config, splits, run_dir, process, resume)
        if process.is_main and not resume:
            record_vocabulary(run_dir, config, data.tokenizer.get_vocab_size())
        model, optimizer = build_model(config, data.tokenizer.get_vocab_size(), process.device)
        state = (
            restore_run(run_dir, model, optimizer, process.world_size) if resume else TrainState()
        )
        log = MetricsLog(run_dir, process.is_main, state.step if resume else None, config.schedule)
        if process.is_main and not resume:
            log.log(
                split="setup", step=0, params=sum(p.numel() for p in model.parameters()),
                vocab=data.tokenizer.get_vocab_size(), train_pairs=len(data.train.src),
                amp=process.amp, device=str(process.device), world_size=process.world_size,
                setup_seconds=time.time() - started,
            )  # fmt: skip
        # 2. Before the budget's clock starts (it counts training steps and validations only): with
        # the triton backend on a GPU, compile every kernel the run launches, and keep autotuning's
        # choices on disk.
        kernels = warmup.uses_kernels(config, process)
        warmed: dict = {}
        if kernels and config.kernel_warmup:
            loss = functools.partial(label_smoothed_loss, smoothing=config.label_smoothing)
            warmed = warmup.warm_kernels(model, process, loss, config.progress).metrics()
            log.log(split="kernel_warmup", step=state.step, **warmed)
        # 3. Train, validating and checkpointing on the way.
        stop = stop or StopRequest()
        with warmup.tune_cache(kernels):
            losses, stopped = train_loop(
                config, state, process, data, model, optimizer, log, run_dir, stop
            )
            # 4. Finish: average the last checkpoints, score the best on the test split. All
            # that is checkpointed; a signal from here on exits at once (a resume redoes this),
            # and one that came as the loop ended stops the run here.
            stopped = stopped or stop.requested
            stop.training_over(run_dir)
            finish = process.is_main and not stopped
            metrics = (
                finish_run(config, state, data, model, log, run_dir, process, started, warmed)
                if finish
                else {}
            )
    if process.distributed:
        dist.barrier()
    loss_values = torch.stack(losses).tolist() if losses else []
    return TrainResult(run_dir, model, state.step, loss_values, metrics, stopped)


def train_loop(
    config: TrainConfig,
    state: TrainState,
    process: Process,
    data: Data,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    log: MetricsLog,
    run_dir: Path,
    stop: StopRequest,
) -> tuple[list[torch.Tensor], bool]:
    """Train until the budget or the epochs run out, or a stop is requested; validate and
    checkpoint on the way. The step losses, and whether a stop request ended the loop."""
    losses: list[torch.Tensor] = []  # left on the device: read back only when logged
    last_eval_step = state.step if state.validated else -1  # a resumed run's checkpoint's
    saved_step = state.step if state.step > 0 else -1  # a resumed run's checkpoint
    module = training_module(model, config, process)
    throughput = Throughput()
    model.train()
    done, stopping = check_budget(config, state, process, stop)
    while not (done or stopping) and state.epoch < config.epochs:
        batches = epoch_batches(data.train, config, state.epoch, process)
        bar = progress_bar(state, len(batches), process.is_main and config.progress)
        while state.next_batch < len(batches):
            step_start = clock()
            pairs = batches[state.next_batch]
            loss, lr, tokens = train_step(
                config, state, process, module, optimizer, data.train, pairs, len(batches)
            )
            losses.append(loss)
            throughput.add(tokens)
            bar.update(1)
            if state.step % config.log_every == 0:
                log_training(log, state, bar, loss, lr, throughput.per_second(process.world_size))
                throughput.restart()
            end_of_epoch = state.next_batch == len(batches)
            if end_of_epoch:
                state.epoch, state.next_batch = state.epoch + 1, 0
            state.train_time += clock() - step_start
            done, stopping = check_budget(config, state, process, stop)
            periodic = config.eval_every and state.step % config.eval_every == 0
            if done or (end_of_epoch and config.eval_at_epoch_end) or periodic:
                eval_start = clock()
                val = validate(model, data, config, process, state, log)
                state.train_time += clock() - eval_start
                # The validation may have spent the budget: stop now rather than train one
                # more step and validate it again. Checked before saving, so that a resumed
                # run's clock (and schedule) counts the validation too. The check is monotone
                # (same step, train_time only grew): a run that was done stays done.
                done, stopping = check_budget(config, state, process, stop)
                save_run(run_dir, model, optimizer, state, config, val, process)
                last_eval_step = saved_step = state.step
                throughput.restart()
            elif config.checkpoint_every and state.step % config.checkpoint_every == 0:
                save_run(run_dir, model, optimizer, state, config, None, process)
                saved_step = state.step
            if done or end_of_epoch or stopping:
                break
        bar.close()
    if stopping:
        if saved_step != state.step:  # the position to resume from; no validation: stop soon
            save_run(run_dir, model, optimizer, state, config, None, process)
        return losses, True
    if last_eval_step != state.step and process.is_main:  # e.g. resumed at the very end:
        val = validate(model, data, config, process, state, log)  # make sure 'last' exists
        save_run(run_dir, model, optimizer, state, config, val, process)
    return losses, False


def train_step(
    config: TrainConfig,
    state: TrainState,
    process: Process,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    corpus: Corpus,
    pairs: list[int],
    batches_in_epoch: int,
) -> tuple[torch.Tensor, float, int]:
    """One optimizer step on the training ``pairs``: (loss on the device, lr, tokens)."""
    cpu_batch: Batch = make_batch([corpus.src[i] for i in pairs], [corpus.tgt[i] for i in pairs])
    # Counted on the host copy: counting on the GPU would sync the device every step.
    tokens = int((cpu_batch.src != PAD_ID).sum()) + cpu_batch.num_tgt_tokens
    batch = cpu_batch.to(process.device)
    state.step += 1
    lr = learning_rate(config, state, batches_in_epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # Dropout re-seeded from (seed, step, rank): a resumed run draws what an uninterrupted one does.
    torch.manual_seed(config.seed * 1_000_003 + state.step * process.world_size + process.rank)
    if config.compile:
        mark_dynamic_batch(batch.src, batch.tgt_in)  # one graph for every batch shape
    with autocast(process.device, process.amp):
        logits = module(batch.src, batch.tgt_in)
    loss = label_smoothed_loss(logits, batch.tgt_out, config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(module.parameters(), config.clip_norm)
    optimizer.step()
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


def epoch_batches(
    corpus: Corpus, config: TrainConfig, epoch: int, process: Process
) -> list[list[int]]:
    """This rank's batches of ``epoch`` (a function of seed and epoch); a CorpusError when it
    gets none."""
    batches = batch_indices(corpus.lengths(), config.max_tokens, config.seed, epoch)
    mine = shard(batches, process.rank, process.world_size)
    if not mine:  # the loop would spin without a step, never reading the budget or a stop
        raise CorpusError(
            f"{len(corpus.src)} training pairs make {len(batches)} batches of at most "
            f"{config.max_tokens} tokens, none for each of {process.world_size} processes: "
            "nothing to train on"
        )
    return mine


# --- the learning rate ---------------------------------------------------------------------------


def learning_rate(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The learning rate of step ``state.step`` (already counted) under ``config.schedule``:
    linear warm-up, then inverse-square-root decay or linear decay to zero at the end of the
    budget."""
    if config.schedule == "inverse-sqrt":
        return inverse_sqrt_lr(state.step, config.lr, config.warmup_steps)
    used = budget_used(config, dataclasses.replace(state, step=state.step - 1), batches_in_epoch)
    return linear_decay_lr(state.step, config.lr, config.warmup_steps, used)


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Learning rate at 1-based ``step``: linear warm-up to ``peak``, then ``peak·√(warmup/step)``."""
    if warmup == 0:
        return peak
    return peak * min(step / warmup, math.sqrt(warmup / step))


def linear_decay_lr(step: int, peak: float, warmup: int, used: float) -> float:
    """Learning rate at 1-based ``step`` when the fraction ``used`` of the budget is spent: linear
    warm-up to ``peak`` over ``warmup`` steps, then linear decay to zero as ``used`` reaches 1
    ("Budgeted Training", Li et al., ICLR 2020)."""
    warm = 1.0 if warmup == 0 else step / warmup
    return peak * max(0.0, min(warm, 1.0 - used))


def budget_used(config: TrainConfig, state: TrainState, batches_in_epoch: int) -> float:
    """The fraction of the run's budget spent before the next step: the largest of the time,
    step and epoch fractions, since whichever budget runs out first ends the run."""
    epochs_done = state.epoch + state.next_batch / max(batches_in_epoch, 1)
    used = epochs_done / config.epochs
    if config.max_steps is not None:
        used = max(used, state.step / config.max_steps)
    if config.time_budget is not None:
        used = max(used, state.schedule_time / (config.time_budget * 60))
    return min(used, 1.0)


# --- when to stop: the budget, and SIGTERM / SIGINT ----------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def clock() -> float:
    """Seconds on the clock the time budget is kept with (tests put a fake one in its place)."""
    return time.monotonic()


def exit_status(signum: int) -> int:
    """The shell's status of a process ended by signal ``signum``: 143 for SIGTERM, 130 for SIGINT."""
    return 128 + signum


class StopRequest:
    """A request to stop training after the current step, with a checkpoint.

    :meth:`on_signals` makes SIGTERM and SIGINT (what a scheduler, a preemption or Ctrl-C sends)
    ask for it; a second signal, while the first one's step and checkpoint are still being
    finished, ends the process at once with status :func:`exit_status` (the checkpoints on disk
    stay valid: they are written atomically). The same signal again within
    ``REPEAT_SECONDS`` is the same request: torchrun forwards to its workers the signal it
    received, which Ctrl-C (the whole process group) or SLURM (every process of the job) has
    already sent them.
    """

    REPEAT_SECONDS = 1.0

    def __init__(self) -> None:
        self.signum: int | None = None
        self.at = 0.0  # time.monotonic() of the request
        self.finished_run: Path | None = None  # training over: what is left a resume redoes

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        self.signum, self.at = signum, time.monotonic()

    @contextmanager
    def on_signals(self) -> Iterator[StopRequest]:
        """Within the block, SIGTERM and SIGINT request a stop; the old handlers come back after."""
        previous = {signum: signal.signal(signum, self.handle) for signum in STOP_SIGNALS}
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def training_over(self, run_dir: Path) -> None:
        """Training has ended, checkpointed: what follows (averaging, scoring the test split) a
        resume of ``run_dir`` redoes, so a signal from now on exits at once, saying so."""
        self.finished_run = run_dir

    def handle(self, signum: int, frame: object = None) -> None:
        # os.write, not print: the signal may have interrupted a write to stderr (the progress
        # bar), and a buffered stream refuses to be re-entered.
        name = signal.Signals(signum).name
        if self.finished_run is not None:
            message = (
                f"\n{name}: training had ended, checkpointed; exiting now, before the run's "
                f"final scoring: train.py --resume {self.finished_run} (with as many processes) "
                "redoes it\n"
            )
            os.write(2, message.encode())
            os._exit(exit_status(signum))
            return
        if self.requested:
            repeat = signum == self.signum and time.monotonic() - self.at < self.REPEAT_SECONDS
            if not repeat:
                os.write(2, f"\n{name} again: exiting now, without a checkpoint\n".encode())
                os._exit(exit_status(signum))
            return
        self.request(signum)
        message = (
            f"\n{name}: stopping after this step and writing a checkpoint "
            "(send it again to exit at once)\n"
        )
        os.write(2, message.encode())


def check_budget(
    config: TrainConfig, state: TrainState, process: Process, stop: StopRequest
) -> tuple[bool, bool]:
    """(whether the step or time budget is spent, whether a stop was requested). Rank 0's clock
    decides the budget, so all ranks stop together (and share its ``train_time`` as the
    schedule's clock); a stop requested on any rank stops every rank at this same step."""
    over = (config.max_steps is not None and state.step >= config.max_steps) or (
        config.time_budget is not None and state.train_time >= config.time_budget * 60
    )
    stopping = stop.requested
    if process.distributed:
        # One all-reduce a step: rank 0's budget verdict and clock (the others add zeros), and
        # every rank's stop request.
        main = float(process.is_main)
        flags = torch.tensor(
            [float(over) * main, state.train_time * main, float(stopping)],
            dtype=torch.float64,
            device=process.device,
        )
        dist.all_reduce(flags)
        over, state.train_time, stopping = bool(flags[0]), flags[1].item(), bool(flags[2])
    state.schedule_time = state.train_time
    return over, stopping


# --- validation and the run's end ----------------------------------------------------------------


def validate(
    model: Transformer,
    data: Data,
    config: TrainConfig,
    process: Process,
    state: TrainState,
    log: MetricsLog,
) -> dict[str, float] | None:
    """Validation loss, BLEU and chrF on rank 0 (None elsewhere), logged and plotted."""
    if not process.is_main:
        return None
    val = evaluate(
        model, data.tokenizer, data.val, config.val_beam_size, config.length_penalty,
        config.max_tokens, process.amp,
    )  # fmt: skip
    log.log(split="val", step=state.step, epoch=state.epoch, beam_size=config.val_beam_size, **val)
    log.plot()
    if config.progress:
        tqdm.write(
            f"step {state.step} epoch {state.epoch}: val loss {val['loss']:.3f} "
            f"BLEU {val['bleu']:.2f} (lc {val['bleu_lc']:.2f}) chrF {val['chrf']:.2f}"
        )
    return val


def finish_run(
    config: TrainConfig,
    state: TrainState,
    data: Data,
    model: Transformer,
    log: MetricsLog,
    run_dir: Path,
    process: Process,
    started: float,
    warmed: dict | None = None,
) -> dict[str, float | bool]:
    """Rank 0: average the last checkpoints (if asked), score the best on the test split, write
    ``results.json``; the metrics (with ``warmed``: the kernel warm-up's, outside the budget)."""
    metrics: dict[str, float | bool] = {"train_time": state.train_time, "steps": state.step}
    metrics.update(warmed or {})
    if config.average_last > 1:
        metrics.update(average_last_checkpoints(config, state, data, model, log, run_dir, process))
    metrics["best_val_bleu"] = state.best_bleu  # the best checkpoint's (or the average's)
    if config.final_test:
        metrics.update(score_best_on_test(config, state, data, model, log, run_dir, process))
    metrics["wall_seconds"] = time.time() - started
    atomic_write_json(run_dir / "results.json", metrics)
    log.plot()
    return metrics


def average_last_checkpoints(
    config: TrainConfig,
    state: TrainState,
    data: Data,
    model: Transformer,
    log: MetricsLog,
    run_dir: Path,
    process: Process,
) -> dict[str, float | bool]:
    """Average the weights of the last ``average_last`` checkpoints, validate the average, and
    point ``best.json`` at it when it beats the best checkpoint's BLEU."""
    checkpoints = load_recent(run_dir, config.average_last)
    if len(checkpoints) < 2:
        return {}
    averaged = save_average(run_dir, checkpoints, extra_meta={"train_config": config.to_dict()})
    averaged.load_weights(model)
    val = evaluate(
        model, data.tokenizer, data.val, config.val_beam_size, config.length_penalty,
        config.max_tokens, process.amp,
    )  # fmt: skip
    steps = [c.meta["step"] for c in checkpoints]
    is_best = val["bleu"] > state.best_bleu
    log.log(split="val_average", step=state.step, averaged_steps=steps, best=is_best, **val)
    if is_best:
        state.best_bleu = val["bleu"]
        point(run_dir, "best", averaged, val=val, best_bleu=val["bleu"])
    if config.progress:
        verdict = "the new best" if is_best else "not better than the best checkpoint"
        tqdm.write(
            f"average of steps {steps}: val BLEU {val['bleu']:.2f} chrF {val['chrf']:.2f}, {verdict}"
        )
    return {**{f"average_val_{k}": v for k, v in val.items()}, "average_is_best": is_best}


def score_best_on_test(
    config: TrainConfig,
    state: TrainState,
    data: Data,
    model: Transformer,
    log: MetricsLog,
    run_dir: Path,
    process: Process,
) -> dict[str, float]:
    """The best checkpoint's validation scores (as saved) and its scores on the test split."""
    test_start = time.time()
    best = load_checkpoint(run_dir, "best")
    best.load_weights(model)
    langs = (config.src_lang, config.tgt_lang)
    test_corpus = encode_split(data.tokenizer, data.test, *langs)
    test = evaluate(
        model, data.tokenizer, test_corpus, config.beam_size, config.length_penalty,
        config.max_tokens, process.amp,
    )  # fmt: skip
    log.log(
        split="test", step=state.step, best_step=best.meta["step"], beam_size=config.beam_size,
        **test,
    )  # fmt: skip
    return {
        **{f"val_{k}": v for k, v in best.meta["val"].items()},
        **{f"test_{k}": v for k, v in test.items()},
        "best_step": best.meta["step"],
        "test_seconds": time.time() - test_start,
    }


# --- progress reports ----------------------------------------------------------------------------


def progress_bar(state: TrainState, total: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=state.next_batch,
        desc=f"epoch {state.epoch}",
        disable=not enabled,
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

    def per_second(self, world_size: int = 1) -> float:
        """Tokens per second across ``world_size`` ranks that each train as many."""
        return self.tokens / max(time.time() - self.start, 1e-9) * world_size


def log_training(
    log: MetricsLog, state: TrainState, bar: tqdm, loss: torch.Tensor, lr: float, tok_s: float
) -> None:
    loss_value = loss.item()
    bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{tok_s:.0f}", lr=f"{lr:.2e}")
    log.log(
        split="train",
        step=state.step,
        epoch=state.epoch,
        loss=loss_value,
        lr=lr,
        tokens_per_s=tok_s,
    )
