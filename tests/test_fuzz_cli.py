"""Fuzzing the command lines that read text (hypothesis): translate fed random files (random
bytes, random Unicode with lone surrogates, very long lines, blank lines, any line endings) and
the attention-map command random sentences. Lines in = lines out; a file that is not UTF-8
stops at its first bad line with that line's number and the lines before it written, or,
with ``--errors replace``, is translated whole; nothing ever escapes as a traceback.

Run in-process on an untrained tiny run (tests/attention_map_helpers.py); a few examples in
the default run, many under ``-m slow``.
"""

from __future__ import annotations

import contextlib
import io
import unicodedata
from pathlib import Path

import pytest
from attention_map_helpers import SENTENCES, save_untrained_run
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from transformer.translation import attention_maps, translate
from transformer.translation.text_input import UTF16_BYTE_ORDER_MARKS
from transformer.translation.tokenizer import train_tokenizer

MAX_LENGTH = 8  # so that a line of a few dozen words is split
QUICK = settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LONG = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

LINES = st.one_of(
    st.binary(max_size=24),
    st.text(max_size=24).map(str.encode),
    st.binary(max_size=24)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
    .map(lambda t: t.encode("utf-8", "surrogateescape")),
    st.text(st.characters(categories=["Cs", "Cc", "Cf", "Zs", "Zl", "So"]), max_size=8).map(
        lambda t: t.encode("utf-8", "surrogatepass")  # lone surrogates: bytes that are not UTF-8
    ),
    st.sampled_from([b"", b"   ", b"\t", b"\r", b"\xef\xbb\xbf", "Ein Hund läuft.".encode()]),
    st.integers(1, 40).map(lambda n: b" ".join([b"Haus"] * n)),
)
FILES = st.tuples(st.lists(LINES, min_size=1, max_size=5), st.booleans()).map(
    lambda drawn: b"\n".join(drawn[0]) + (b"\n" if drawn[1] else b"")
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tokenizer = train_tokenizer([*SENTENCES, "Das Haus ist rot."], 90, 1)
    return save_untrained_run(tmp_path_factory.mktemp("run"), tokenizer, max_length=MAX_LENGTH)


def translate_file(run_dir: Path, tmp_path: Path, data: bytes, errors: str):
    """(status, output lines or None, stderr lines) of translate.main on ``data``."""
    source, target = tmp_path / "in.de", tmp_path / "out.en"
    source.write_bytes(data)
    target.unlink(missing_ok=True)
    err = io.StringIO()
    argv = ["--checkpoint", str(run_dir), "--input", str(source), "--output", str(target)]
    with contextlib.redirect_stderr(err):
        status = translate.main([*argv, "--beam-size", "1", "--errors", errors])
    out = target.read_bytes().decode("utf-8").split("\n")[:-1] if target.exists() else None
    return status, out, err.getvalue().splitlines()


def check_translate(run_dir: Path, tmp_path: Path, data: bytes, errors: str) -> None:
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # a final newline ends the last line; it does not start another
    status, out, err = translate_file(run_dir, tmp_path, data, errors)
    if not lines:
        assert status == 1 and out is None and len(err) == 1 and "is empty" in err[0]
        return
    if lines[0].startswith(UTF16_BYTE_ORDER_MARKS):  # UTF-16: refused whole, in either mode
        assert status == 1 and not out and len(err) == 1 and "is UTF-16" in err[0], err
        return
    bad = [i for i, raw in enumerate(lines) if not _is_utf8(raw)]
    if errors == "strict" and bad:
        assert status == 1 and "error: line" in err[-1]
        assert f"line {bad[0] + 1} of" in err[-1] and "not valid UTF-8" in err[-1]
        assert len(out or []) == bad[0]  # the lines before the bad one, no more
        return
    assert status == 0, err
    assert len(out) == len(lines)
    assert all("warning" in e for e in err)
    for i, raw in enumerate(lines):
        raw = raw.removeprefix(b"\xef\xbb\xbf") if i == 0 else raw
        text = raw.removesuffix(b"\r").decode("utf-8", "replace")
        if not "".join(" " if unicodedata.category(c) == "Cc" else c for c in text).strip():
            assert out[i] == "", (raw, out[i])  # a blank line, or one of control characters


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_translate_fuzzed_files_give_lines_in_lines_out_or_stop_at_the_first_bad_line(
    run_dir, tmp_path, errors
):
    @QUICK
    @given(FILES)
    @example(b"\xfe\xff")  # a UTF-16 byte order mark: the file is refused whole
    def run(data):
        check_translate(run_dir, tmp_path, data, errors)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_translate_fuzzed_files_long(run_dir, tmp_path, errors):
    @LONG
    @given(FILES)
    def run(data):
        check_translate(run_dir, tmp_path, data, errors)

    run()


SENTENCE_TEXT = st.one_of(
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.integers(1, 30).map(lambda n: " ".join(["Haus"] * n)),
)


def check_attention_map(run_dir: Path, tmp_path: Path, sentence: str, errors: str) -> None:
    out = tmp_path / "map.png"
    out.unlink(missing_ok=True)
    argv = ["--checkpoint", str(run_dir), "--sentence", sentence, "--output", str(out)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            attention_maps.main([*argv, "--beam-size", "1", "--errors", errors, "--dpi", "10"])
        except SystemExit as stop:
            assert stop.code in (1, 2), err.getvalue()
            assert "error: " in err.getvalue().splitlines()[-1]
            assert not out.exists()
            return
    assert out.stat().st_size > 0


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_attention_map_fuzzed_sentences_draw_a_map_or_say_why_not(run_dir, tmp_path, errors):
    @settings(QUICK, max_examples=3)
    @given(SENTENCE_TEXT)
    def run(sentence):
        check_attention_map(run_dir, tmp_path, sentence, errors)

    run()


@pytest.mark.slow
@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_attention_map_fuzzed_sentences_long(run_dir, tmp_path, errors):
    @settings(LONG, max_examples=50)
    @given(SENTENCE_TEXT)
    def run(sentence):
        check_attention_map(run_dir, tmp_path, sentence, errors)

    run()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["▁Haus", "▁H", "au", "s", "."]), max_size=60), st.integers(1, 9))
def test_split_at_words_covers_the_line_in_parts_within_the_limit_cut_before_words(pieces, limit):
    parts = translate.split_at_words(pieces, limit)
    assert [p for a, b in parts for p in pieces[a:b]] == pieces  # in order, nothing lost
    assert all(0 < b - a <= limit for a, b in parts)
    for (a, b), _ in zip(parts, parts[1:], strict=False):  # every cut but the line's end
        starts = [k for k in range(a + limit // 2 + 1, a + limit + 1) if pieces[k][0] == "▁"]
        assert b == (max(starts) if starts else a + limit)
