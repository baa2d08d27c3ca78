"""Reading and validating parallel corpora, and a split as token ids (:class:`Corpus`).

A corpus is a directory in one of two shapes:

* text files ``<split>.<lang>`` or ``<split>.<lang>.gz`` — UTF-8, one sentence a line, line *i*
  of the source file translating line *i* of the target file (the shipped Multi30K copy in
  ``data/multi30k`` is this shape); or
* a ``datasets`` directory written by ``DatasetDict.save_to_disk`` whose splits have one string
  column per language, or a ``translation`` column of ``{lang: sentence}`` dicts (the layout of
  the hub's translation datasets). Its sentences are stripped as lines of a text file are.

Either way the pairs come back as a ``datasets.Dataset`` with one column per language. Nothing is
fetched from the Hugging Face hub: text files are read here (so that a bad byte or an empty line is
reported with its file and line number) and wrapped with ``Dataset.from_dict``; ``save_to_disk``
directories are opened with ``datasets.load_from_disk``.

Malformed input is refused with :class:`CorpusError`, never truncated silently:
a missing file, an empty file, undecodable bytes, an empty (or whitespace-only) line, a saved
sentence with a line break inside, and sides of different lengths. Multi30K has no empty lines,
so refusing them costs nothing there and keeps pairs aligned elsewhere: an empty line in parallel
data usually means one side lost or gained a sentence.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never reach for the hub

import datasets  # noqa: E402

from transformer.translation.text_input import utf16_message  # noqa: E402
from transformer.translation.tokenizer import encode  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "multi30k"
SPLIT_ALIASES = {"val": ("val", "validation", "valid", "dev"), "train": ("train",)}


class CorpusError(ValueError):
    """A corpus file or directory that cannot be used as parallel data."""


def read_lines(path: str | os.PathLike) -> list[str]:
    """Read one sentence per line from a UTF-8 text file, gzip-compressed if named ``*.gz``.

    Line endings (``\\n`` or ``\\r\\n``), surrounding whitespace and a UTF-8 byte order mark
    at the start are stripped.

    Raises:
        CorpusError: the file is missing, empty or unreadable (a damaged ``.gz``: the lines read
            before it are named), a line is not valid UTF-8 (1-based line number
            given), or a line is empty.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and (message := utf16_message(str(path), raw)):
                    raise CorpusError(message)
                try:  # a byte order mark (editors on Windows write one) is not a character
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    bad = raw[err.start : err.end].hex(" ")
                    raise CorpusError(
                        f"{path}:{number}: not valid UTF-8 (bytes {bad} at byte {err.start + 1}); "
                        "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8 for Latin-1)"
                    ) from None
                text = text.strip()
                if not text:
                    raise CorpusError(
                        f"{path}:{number}: empty line (every line must be a sentence)"
                    )
                lines.append(text)
    except (OSError, EOFError, zlib.error) as err:  # a truncated, damaged or non-gzip *.gz file
        after = f" after line {len(lines)}" if lines else ""
        raise CorpusError(f"{path}: cannot read{after} ({err})") from None
    if not lines:
        raise CorpusError(f"{path}: empty file (no sentences)")
    return lines


def read_parallel(
    src_path: str | os.PathLike, tgt_path: str | os.PathLike
) -> tuple[list[str], list[str]]:
    """Read two aligned files; raises :class:`CorpusError` if either is bad or their lengths differ."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        shorter, longer = (src_path, tgt_path) if len(src) < len(tgt) else (tgt_path, src_path)
        raise CorpusError(
            f"line-count mismatch: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)}; "
            f"{shorter} ends before line {min(len(src), len(tgt)) + 1} of {longer}"
        )
    return src, tgt


def _text_file(data_dir: Path, split: str, lang: str) -> Path:
    """The file of one split and language: ``name`` or ``name.gz``, never both."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        plain, packed = data_dir / f"{name}.{lang}", data_dir / f"{name}.{lang}.gz"
        if plain.is_file() and packed.is_file():
            raise CorpusError(
                f"{data_dir}: both {plain.name} and {packed.name} exist and may differ; "
                "keep one of them"
            )
        for candidate in (plain, packed):
            if candidate.is_file():
                return candidate
    tried = [f"{name}.{lang}[.gz]" for name in SPLIT_ALIASES.get(split, (split,))]
    expected = tried[0] if len(tried) == 1 else f"{', '.join(tried[:-1])} or {tried[-1]}"
    files = sorted(p.name for p in data_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    here = ", ".join(files[:12]) + (f", ... ({len(files)} files)" if len(files) > 12 else "")
    raise CorpusError(
        f"{data_dir}: no file for split {split!r}, language {lang!r}: expected {expected}; "
        f"files here: {here or 'none'}"
    )


def _is_saved_dataset(data_dir: Path) -> bool:
    return (data_dir / "dataset_dict.json").is_file() or (data_dir / "dataset_info.json").is_file()


def _saved_column(ds: datasets.Dataset, where: str, lang: str) -> tuple[list, str]:
    """The sentences of ``lang``: its own column, or its entries of a ``translation`` column of
    ``{lang: sentence}`` dicts (the hub's translation datasets); and their name in messages."""
    if lang in ds.column_names:
        return ds[lang], f"column {lang!r}"
    if "translation" in ds.column_names:
        feature = ds.features["translation"]
        languages = getattr(feature, "languages", None) or (
            list(feature) if isinstance(feature, dict) else None
        )
        if languages is not None and lang not in languages:
            raise CorpusError(
                f"{where}: no {lang!r} in column 'translation' "
                f"(languages: {', '.join(sorted(languages))})"
            )
        rows = ds["translation"]
        return [row.get(lang) if isinstance(row, dict) else None for row in rows], (
            f"column 'translation', language {lang!r}"
        )
    raise CorpusError(
        f"{where}: no column {lang!r} (columns: {ds.column_names}); name the source and target "
        "columns as the languages"
    )


def _check_saved_split(
    ds: datasets.Dataset, where: str, src_lang: str, tgt_lang: str
) -> datasets.Dataset:
    """The two languages' sentences, stripped as lines of a text file are; refused, naming the
    row, if one is empty, not a string or more than one line."""
    if len(ds) == 0:
        raise CorpusError(f"{where}: empty split (no sentences)")
    columns = {}
    for lang in (src_lang, tgt_lang):
        texts, name = _saved_column(ds, where, lang)
        stripped = []
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise CorpusError(f"{where}: row {row} of {name} is empty or not a string")
            text = text.strip()
            if "\n" in text or "\r" in text:
                raise CorpusError(
                    f"{where}: row {row} of {name} has a line break inside; a sentence is one "
                    "line (join its lines with spaces, or split the pair)"
                )
            stripped.append(text)
        columns[lang] = stripped
    return datasets.Dataset.from_dict(columns)


def load_split(
    data_dir: str | os.PathLike, split: str, src_lang: str = "de", tgt_lang: str = "en"
) -> datasets.Dataset:
    """Load one split of a parallel corpus as a ``datasets.Dataset`` with columns ``src_lang``, ``tgt_lang``.

    Args:
        data_dir: a directory of ``<split>.<lang>[.gz]`` files or a ``save_to_disk`` directory.
        split: ``"train"``, ``"val"`` (also found as validation/valid/dev) or any other name,
            e.g. ``"test_2016_flickr"``.
        src_lang, tgt_lang: language suffixes of the files, or column names of a saved dataset.

    Raises:
        CorpusError: see the module docstring.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CorpusError(f"{data_dir}: no such directory")
    if _is_saved_dataset(data_dir):
        try:
            saved = datasets.load_from_disk(str(data_dir))
        except (OSError, ValueError, KeyError, TypeError) as err:  # JSON, Arrow, missing files
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CorpusError(
                f"{data_dir}: not a readable datasets save_to_disk directory "
                f"({type(err).__name__}: {reason})"
            ) from None
        if isinstance(saved, datasets.Dataset):
            if split != "train":
                raise CorpusError(f"{data_dir}: a single saved Dataset has no split {split!r}")
            return _check_saved_split(saved, str(data_dir), src_lang, tgt_lang)
        for name in SPLIT_ALIASES.get(split, (split,)):
            if name in saved:
                return _check_saved_split(saved[name], f"{data_dir}[{name}]", src_lang, tgt_lang)
        raise CorpusError(f"{data_dir}: no split {split!r} (splits: {list(saved)})")
    src_file, tgt_file = (_text_file(data_dir, split, lang) for lang in (src_lang, tgt_lang))
    names = [
        f.name.removesuffix(".gz").removesuffix(f".{lang}")
        for f, lang in ((src_file, src_lang), (tgt_file, tgt_lang))
    ]
    if names[0] != names[1]:  # e.g. dev.fr and a leftover val.en: not one split's two sides
        raise CorpusError(
            f"{data_dir}: split {split!r} would pair {src_file.name} and {tgt_file.name}, files "
            f"of different names; give both languages the same name ({names[0]} or {names[1]})"
        )
    src, tgt = read_parallel(src_file, tgt_file)
    return datasets.Dataset.from_dict({src_lang: src, tgt_lang: tgt})


@dataclass
class Corpus:
    """Token ids of one split; targets wrapped in BOS/EOS. ``tgt_text``, the references that
    decodes are scored against, is in the tokenizer's Unicode normalization (NFKC), the only
    form a decode can take."""

    src: list[list[int]]
    tgt: list[list[int]]
    tgt_text: list[str]
    tgt_lang: str = "en"  # the references' language: how BLEU splits them into words

    def lengths(self) -> list[int]:
        return [max(len(s), len(t) - 1) for s, t in zip(self.src, self.tgt, strict=True)]


def encode_split(
    tokenizer,
    ds: datasets.Dataset,
    src_lang: str,
    tgt_lang: str,
    limit: int | None = None,
    max_length: int | None = None,
) -> Corpus:
    """The first ``limit`` pairs of ``ds`` (all when None) as token ids; with ``max_length``,
    without the pairs that have a side longer than that many tokens."""
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    src_text, tgt_text = list(ds[src_lang]), list(ds[tgt_lang])
    if tokenizer.normalizer is not None:  # an NFD reference never matches an NFKC decode
        tgt_text = [tokenizer.normalizer.normalize_str(text) for text in tgt_text]
    src, tgt = encode(tokenizer, src_text), encode(tokenizer, tgt_text, add_bos_eos=True)
    if max_length is not None:
        keep = [
            i
            for i in range(len(src))
            if len(src[i]) <= max_length and len(tgt[i]) - 1 <= max_length
        ]
        src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
        tgt_text = [tgt_text[i] for i in keep]
    return Corpus(src, tgt, tgt_text, tgt_lang)
