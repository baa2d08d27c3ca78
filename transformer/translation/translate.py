"""Translate German to English with a trained run: ``python -m transformer.translation.translate --checkpoint RUN_DIR``.

Reads one sentence a line from stdin (or ``--input``) as bytes, checked line by line by
:mod:`transformer.translation.text_input`, and writes one translation a line, UTF-8, to stdout
(or ``--output``), in the same order: lines in = lines out, a blank line gives an empty line.
The input is translated a window of lines at a time (length-sorted batches inside it) and each
window is written and flushed as soon as it is done, so a failure at line N leaves the lines
before N written. A line longer than the model was trained on is split at word boundaries into
parts of at most ``max_length`` tokens, translated part by part and joined with spaces, with a
warning. The run directory's ``best.json`` checkpoint is used (``last.json`` if the run has no
best yet, or with ``--which last``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO, TextIO

import torch

from transformer.config import ModelConfig
from transformer.model import Transformer
from transformer.translation.checkpoint import CheckpointError, load_checkpoint
from transformer.translation.cli import HelpFormatter, device_problem, prepare_output
from transformer.translation.evaluation import DEFAULT_LENGTH_PENALTY, translate_ids
from transformer.translation.text_input import ERRORS, ERRORS_HELP, BadInput, Line, read_lines
from transformer.translation.tokenizer import WORD_MARK, decode, encode, load_tokenizer

MODULE_COMMAND = "python -m transformer.translation.translate"
SCRIPT = "flash-transformer-translate"  # the console script pyproject.toml installs


def program_name() -> str:
    """The command as it was started, for usage lines and messages: the installed console
    script's name, else ``python -m ...``."""
    return SCRIPT if Path(sys.argv[0]).name == SCRIPT else MODULE_COMMAND


WINDOW_BATCHES = 4  # a window holds about this many full batches of source tokens
RUN_CONFIG_FILE = "config.json"  # training's CONFIG_FILE, named here so as not to import training


def training_max_length(run_dir: str | Path) -> int:
    """The longest sentence, in tokens, the run trained on (its ``config.json``'s
    ``max_length``; :class:`TrainConfig`'s default for a run directory without one)."""
    try:
        return int(json.loads((Path(run_dir) / RUN_CONFIG_FILE).read_text())["max_length"])
    except (OSError, ValueError, KeyError, TypeError):
        from transformer.translation.training import TrainConfig  # slow (datasets): only here

        return TrainConfig.max_length


def split_at_words(pieces: Sequence[str], limit: int) -> list[tuple[int, int]]:
    """``(start, end)`` of consecutive parts of at most ``limit`` pieces covering ``pieces``.

    A part ends before the last word start (a piece marked ``▁``) that keeps it within
    ``limit``, unless that would leave it less than half full: a word longer than that is cut.
    """
    parts, start = [], 0
    while len(pieces) - start > limit:
        end = start + limit
        cut = next(
            (k for k in range(end, start + limit // 2, -1) if pieces[k].startswith(WORD_MARK)), end
        )
        parts.append((start, cut))
        start = cut
    return [*parts, (start, len(pieces))] if start < len(pieces) else parts


class Translator:
    """A model and its tokenizer loaded from a run directory, ready to translate text.

    ``max_length``: sentences longer than this many tokens are translated in parts (see
    :meth:`encode`); by default the longest the run trained on (:func:`training_max_length`).
    """

    def __init__(
        self,
        run_dir: str | Path,
        which: str = "best",
        device: str = "cpu",
        max_length: int | None = None,
    ) -> None:
        run_dir = Path(run_dir)
        if which == "best" and not (run_dir / "best.json").is_file():
            which = "last"
        checkpoint = load_checkpoint(run_dir, which)
        try:
            config = ModelConfig(**checkpoint.model_config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{run_dir}: incompatible model config in {which}.json ({err})"
            ) from None
        tokenizer_name = checkpoint.meta.get("tokenizer")
        if not isinstance(tokenizer_name, str) or not tokenizer_name:
            raise CheckpointError(
                f"{run_dir}: corrupt checkpoint pointer {which}.json (tokenizer: {tokenizer_name!r})"
            )
        tokenizer_path = run_dir / tokenizer_name
        if not tokenizer_path.is_file():
            raise CheckpointError(
                f"{run_dir}: no tokenizer ({tokenizer_path.name} is missing; train.py writes it "
                "into the run directory)"
            )
        self.model = Transformer(config)
        checkpoint.load_weights(self.model)
        self.model.to(device).eval()
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.step = checkpoint.meta["step"]
        self.max_length = training_max_length(run_dir) if max_length is None else max_length
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")

    def encode(self, sentences: Sequence[str]) -> list[list[list[int]]]:
        """Each sentence's source ids in parts of at most ``max_length`` tokens
        (:func:`split_at_words`): one part, or none for a blank sentence."""
        for i, sentence in enumerate(sentences):
            if not isinstance(sentence, str):
                raise TypeError(f"sentences[{i}] must be a str, got {type(sentence).__name__}")
            try:
                sentence.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"sentences[{i}] is not valid Unicode ({err.reason} at {err.start}); "
                    "read text with transformer.translation.text_input"
                ) from None
        stripped = [s.strip() for s in sentences]
        encoded = encode(self.tokenizer, stripped)
        parts = []
        for ids, text in zip(encoded, stripped, strict=True):
            pieces = [self.tokenizer.id_to_token(i) for i in ids] if text else []
            parts.append([ids[a:b] for a, b in split_at_words(pieces, self.max_length)])
        return parts

    def translate_parts(
        self,
        sources: Sequence[Sequence[Sequence[int]]],
        beam_size: int = 4,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
        max_tokens: int = 6000,
    ) -> list[str]:
        """The translation of each source given as :meth:`encode`'s parts, parts joined by a space."""
        flat = [part for parts in sources for part in parts]
        out = decode(
            self.tokenizer, translate_ids(self.model, flat, beam_size, length_penalty, max_tokens)
        )
        texts, start = [], 0
        for parts in sources:
            texts.append(" ".join(t for t in out[start : start + len(parts)] if t))
            start += len(parts)
        return texts

    def translate(
        self,
        sentences: Sequence[str],
        beam_size: int = 4,
        length_penalty: float = DEFAULT_LENGTH_PENALTY,
        max_tokens: int = 6000,
    ) -> list[str]:
        """Translations of ``sentences`` in order; blank input lines give empty strings."""
        return self.translate_parts(self.encode(sentences), beam_size, length_penalty, max_tokens)


class TranslationFailed(RuntimeError):
    """Translating a line raised; the message names the line."""


@dataclass(frozen=True)
class Settings:
    """How :func:`translate_lines` translates: the decoding options, the input's name, and the
    source tokens a window holds before it is translated (default: WINDOW_BATCHES batches)."""

    beam_size: int = 4
    length_penalty: float = DEFAULT_LENGTH_PENALTY
    max_tokens: int = 6000
    name: str = "stdin"
    window_tokens: int | None = None


def translate_lines(
    translator: Translator,
    lines: Iterable[Line],
    write: Callable[[list[str]], None],
    warn: Callable[[str], None],
    settings: Settings,
) -> int:
    """Translate ``lines`` window by window, calling ``write`` with each window's translations in
    input order and ``warn`` with each line's notes; how many lines were translated.

    A :class:`BadInput` raised while reading (line N is not UTF-8) is raised again after the
    lines before N are written.
    """
    window: list[tuple[Line, list[list[int]]]] = []
    window_tokens, done = 0, 0
    full = settings.window_tokens or WINDOW_BATCHES * max(
        1, settings.max_tokens // settings.beam_size
    )
    try:
        for line in lines:
            where = f"line {line.number} of {settings.name}"
            for note in line.notes:
                warn(f"{where}: {note}")
            (parts,) = translator.encode([line.text])
            if len(parts) > 1:
                warn(
                    f"{where}: {sum(map(len, parts))} tokens, longer than the "
                    f"{translator.max_length} the model takes (--max-length); split at word "
                    f"boundaries into {len(parts)} parts, translated one by one and joined with "
                    "spaces"
                )
            window.append((line, parts))
            window_tokens += sum(map(len, parts))
            if window_tokens >= full:
                done += translate_window(translator, window, write, settings)
                window, window_tokens = [], 0
    except BadInput:
        done += translate_window(translator, window, write, settings)
        raise
    return done + translate_window(translator, window, write, settings)


def translate_window(
    translator: Translator,
    window: list[tuple[Line, list[list[int]]]],
    write: Callable[[list[str]], None],
    settings: Settings,
) -> int:
    """Translate and write one window; if that fails, its lines one at a time, writing those
    before the first that fails and raising :class:`TranslationFailed` naming that one."""
    if not window:
        return 0
    options = (settings.beam_size, settings.length_penalty, settings.max_tokens)
    try:
        texts = translator.translate_parts([parts for _, parts in window], *options)
    except Exception:  # retried line by line below, to name the failing line
        texts = []
        for line, parts in window:
            try:
                texts.extend(translator.translate_parts([parts], *options))
            except Exception as err:  # reported as one line by main()
                write(texts)
                raise TranslationFailed(
                    f"line {line.number} of {settings.name}: translation failed "
                    f"({type(err).__name__}: {err}); the lines before it are written"
                ) from err
    write(texts)
    return len(texts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=program_name(),
        description=(
            "Translate sentences, one a line, with a run directory written by train.py. Lines "
            "in = lines out: a blank or whitespace-only line gives an empty line; the input is "
            "read as UTF-8 bytes, split at newlines only, control characters (NUL, ...) are "
            "translated as spaces (said on stderr). The output is UTF-8, written and flushed a "
            "window of lines at a time, in input order, so a failure at line N leaves the lines "
            "before N written. A line longer than --max-length tokens is split at word "
            "boundaries, its parts translated one by one and joined with spaces, with a warning "
            "naming the line."
        ),
        epilog=(
            "Exit status: 0 every line translated; 1 the input, the run directory or a line "
            "could not be used (one line on stderr says which and what to do); 2 a wrong "
            "option; 130 interrupted (Ctrl-C), the lines written so far complete. From a "
            "terminal each line is translated as it is typed."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="RUN_DIR", help="run directory written by train.py"
    )
    p.add_argument(
        "--which",
        choices=["best", "last", "average"],
        default="best",
        help="which checkpoint of the run (average: written by python -m transformer.translation.average "
        "or train.py --average-last)",
    )
    p.add_argument("--input", help="file of source sentences (default: stdin)")
    p.add_argument("--output", help="file for the translations, not --input's (default: stdout)")
    p.add_argument("--errors", choices=ERRORS, default="strict", help=ERRORS_HELP)
    p.add_argument(
        "--max-length",
        type=int,
        help="longest line, in tokens, translated in one piece; longer lines are split at word "
        "boundaries (default: the max_length the run trained with, in its config.json)",
    )
    p.add_argument("--beam-size", type=int, default=4, help="beam size; 1 = greedy")
    p.add_argument(
        "--length-penalty",
        type=float,
        default=DEFAULT_LENGTH_PENALTY,
        help="GNMT length penalty alpha",
    )
    p.add_argument(
        "--max-tokens", type=int, default=6000, help="source tokens per batch, all beams counted"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    return p


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with status 2 and argparse's message on an option no run could use."""
    for name in ("beam_size", "max_tokens", "max_length", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not math.isfinite(args.length_penalty):
        parser.error(f"--length-penalty must be a finite number, got {args.length_penalty}")
    problem = device_problem(args.device)
    if problem:
        parser.error(problem)
    if args.input and args.output and same_file(args.input, args.output):
        # Opening --output truncates it while --input is still being read, window by window.
        parser.error(
            f"--output {args.output} is --input {args.input}: the translations would overwrite "
            "the sentences before they are read; write them to another file"
        )


def same_file(first: str, second: str) -> bool:
    """Whether two paths name one file (through a link too)."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return Path(first).resolve() == Path(second).resolve()


def open_input(path: str | None) -> BinaryIO:
    """The input as a binary stream: the file ``path``, or stdin's bytes."""
    if path is None:
        return getattr(sys.stdin, "buffer", None) or _encoded(sys.stdin.read())
    source = Path(path)
    if not source.exists():
        raise BadInput(f"--input {path}: no such file")
    if source.is_dir():
        raise BadInput(f"--input {path}: is a directory, not a file")
    if source.stat().st_size == 0:
        raise BadInput(f"--input {path} is empty: there is nothing to translate")
    return open(source, "rb")  # closed by translate_file()


def _encoded(text: str) -> BinaryIO:
    """A text stdin without a byte buffer (an io.StringIO in a notebook), back as bytes."""
    return io.BytesIO(text.encode("utf-8", errors="surrogateescape"))


def writer(output: BinaryIO | TextIO) -> Callable[[list[str]], None]:
    """Writes translations as UTF-8 lines to ``output`` (bytes; text for a text-only stdout),
    flushed after each call."""

    def write(texts: list[str]) -> None:
        text = "".join(t + "\n" for t in texts)
        output.write(text if isinstance(output, io.TextIOBase) else text.encode("utf-8"))
        output.flush()

    return write


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_options(parser, args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return translate_file(args)
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (BadInput, CheckpointError, TranslationFailed, ValueError, OSError) as err:
        print(f"{program_name()}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"{program_name()}: interrupted; the lines written so far are complete", file=sys.stderr
        )
        return 130


def translate_file(args: argparse.Namespace) -> int:
    """Translate ``args.input`` into ``args.output`` as :func:`main` was asked; 0."""
    source = open_input(args.input)
    translator = Translator(args.checkpoint, args.which, args.device, args.max_length)
    if args.output is not None:
        problem = prepare_output(args.output, "--output")  # makes its directory
        if problem:
            raise BadInput(problem)
    typed = source.isatty()  # someone typing: each line is answered as it is entered
    settings = Settings(
        args.beam_size, args.length_penalty, args.max_tokens, args.input or "stdin", typed or None
    )
    lines = read_lines(source, settings.name, args.errors)
    first = next(lines)  # an empty input or a bad first line is refused before any output
    sys.stdout.flush()
    stdout = getattr(sys.stdout, "buffer", sys.stdout)
    output = open(args.output, "wb") if args.output else stdout  # closed below
    try:
        translate_lines(translator, chain([first], lines), writer(output), _warn, settings)
    finally:
        if output is not stdout:
            output.close()
        if source is not getattr(sys.stdin, "buffer", None):
            source.close()
    return 0


def _warn(message: str) -> None:
    print(f"{program_name()}: warning: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
