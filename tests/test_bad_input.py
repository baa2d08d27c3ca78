"""The command lines that read text (translate, attention maps) on input a user really has: bytes
that are not UTF-8, control characters, blank and very long lines, missing or empty files, run
directories without a tokenizer or weights. Lines in = lines out, each problem is one line on
stderr naming the line and what to do, and the lines before a failure are written.

The run directory holds an untrained tiny model (tests/attention_map_helpers.py): what is checked
is the reading and writing around the model, not the quality of its translations.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from attention_map_helpers import SENTENCES, save_untrained_run

from transformer.translation import attention_maps, translate
from transformer.translation.text_input import BadInput, read_lines
from transformer.translation.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
MAX_LENGTH = 16  # short parts: an untrained model decodes 1.5 x 16 + 10 steps
SIX_LINES = [
    "Ein Hund läuft.".encode(),
    b"",
    b"   ",
    b" ".join([b"Haus"] * 3000),
    b"\xff\xfekaputt\x00Text",
    "Emoji 🐶 und 日本語".encode(),
]


@pytest.fixture(scope="module")
def tokenizer():
    """A tokenizer with ``▁Haus`` as one piece."""
    return train_tokenizer([*SENTENCES, "Das Haus ist rot.", "Ein Haus."], 90, 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer) -> Path:
    """An untrained run whose config.json says it trained on at most MAX_LENGTH tokens a
    sentence; its model stops at once (every translation is empty: fast)."""
    directory = tmp_path_factory.mktemp("run")
    return save_untrained_run(directory, tokenizer, max_length=MAX_LENGTH, seed=0)


@pytest.fixture(scope="module")
def varied_run(tmp_path_factory, tokenizer) -> Path:
    """The same with a model whose translations differ from line to line, so that a line out
    of place shows."""
    directory = tmp_path_factory.mktemp("varied_run")
    return save_untrained_run(directory, tokenizer, max_length=MAX_LENGTH, seed=1)


def run_translate(run_dir: Path, tmp_path: Path, data: bytes, *extra: str, capsys):
    """``translate.main`` on ``data`` as its --input; (exit status, output lines or None if no
    output file was made, stderr lines)."""
    source, target = tmp_path / "in.de", tmp_path / "out" / "out.en"
    source.write_bytes(data)
    argv = ["--checkpoint", str(run_dir), "--input", str(source), "--output", str(target)]
    status = translate.main([*argv, "--beam-size", "1", *extra])
    out = target.read_bytes().decode("utf-8").split("\n") if target.exists() else None
    return status, out, capsys.readouterr().err.splitlines()


@pytest.fixture(scope="module")
def six_lines_replaced(run_dir, tmp_path_factory):
    """The six-line file translated with --errors replace: (status, output lines, stderr lines)."""
    tmp_path = tmp_path_factory.mktemp("six")
    source, target = tmp_path / "in.de", tmp_path / "out.en"
    source.write_bytes(b"\n".join(SIX_LINES) + b"\n")
    argv = ["--checkpoint", str(run_dir), "--input", str(source), "--output", str(target)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = translate.main([*argv, "--beam-size", "1", "--errors", "replace"])
    return status, target.read_bytes().decode("utf-8").split("\n"), err.getvalue().splitlines()


def test_six_line_file_with_errors_replace_gives_six_lines_and_warns_for_lines_4_and_5(
    run_dir, six_lines_replaced
):
    status, out, err = six_lines_replaced
    assert status == 0
    assert len(out) == 7 and out[-1] == ""  # six lines, each ended by a newline
    assert out[1] == out[2] == ""  # the empty line and the line of three spaces
    line_4 = [e for e in err if "line 4 of" in e]
    assert len(line_4) == 1 and "split at word boundaries" in line_4[0]
    assert "3000 tokens" in line_4[0] and f"the {MAX_LENGTH} the model takes" in line_4[0]
    line_5 = " ".join(e for e in err if "line 5 of" in e)
    assert "replaced by U+FFFD" in line_5 and "U+0000" in line_5
    assert all("warning" in e for e in err)


def test_six_line_file_without_errors_replace_stops_at_line_5_with_lines_1_to_4_written(
    run_dir, tmp_path, capsys, six_lines_replaced
):
    data = b"\n".join(SIX_LINES) + b"\n"
    status, out, err = run_translate(run_dir, tmp_path, data, capsys=capsys)
    assert status == 1
    assert len(out) == 5 and out[-1] == ""  # lines 1-4
    assert len(err) == 2 and "line 4 of" in err[0]  # the warning, then the one error line
    assert "error: line 5 of" in err[1] and "not valid UTF-8 (bytes ff" in err[1]
    assert "--errors replace" in err[1]


def test_lines_are_split_at_newlines_only_so_lines_in_equal_lines_out(run_dir, tmp_path, capsys):
    # form feed, vertical tab, U+2028 and U+0085 are line breaks to str.splitlines(), not here;
    # \r\n is one line end; the last line needs no newline; a byte-order mark is dropped.
    data = b"\xef\xbb\xbfEin\x0cHund.\r\nZwei\x0bHunde\nEine\xe2\x80\xa8Frau\xc2\x85.\n\nEin Buch"
    status, out, err = run_translate(run_dir, tmp_path, data, capsys=capsys)
    assert status == 0
    assert len(out) == 6 and out[3] == "" and out[-1] == ""
    # form feed, vertical tab and U+0085 are control characters: translated as spaces, said
    assert [e.split("warning: ")[1].split(" of ")[0] for e in err] == ["line 1", "line 2", "line 3"]
    assert all("control character" in e for e in err)


def test_control_characters_and_nul_are_translated_as_spaces_with_a_note(
    varied_run, tmp_path, capsys
):
    lines = list(read_lines(iter([b"Ein\x00Hund\x1b[0m\x7f.\n", b"\tTab\n"]), "stdin"))
    assert lines[0].text == "Ein Hund [0m ." and "3 control character(s)" in lines[0].notes[0]
    assert lines[1].text == "\tTab" and lines[1].notes == ()  # a tab is text
    status, out, err = run_translate(varied_run, tmp_path, b"Ein\x00Hund.\n", capsys=capsys)
    translation = translate.Translator(varied_run).translate(["Ein Hund."], 1)
    assert status == 0 and out == [*translation, ""]
    assert len(err) == 1 and "1 control character(s) (U+0000) replaced by spaces" in err[0]


def make_problem(problem: str, run_dir: Path, tmp_path: Path) -> tuple[list[str], str]:
    """argv (without --output) for one kind of unusable input, and what its message says."""
    broken = tmp_path / "broken_run"
    if problem in ("no tokenizer", "no weights"):
        broken.mkdir()
        save_untrained_run(broken, translate.Translator(run_dir).tokenizer)
        doomed = {"no tokenizer": "tokenizer.json", "no weights": "checkpoints/*/model.safetensors"}
        next(broken.glob(doomed[problem])).unlink()
    good_input = tmp_path / "good.de"
    good_input.write_text("Ein Hund.\n")
    (tmp_path / "empty.de").write_bytes(b"")
    argv, said = {
        "missing input": (["--input", str(tmp_path / "nowhere.de")], "no such file"),
        "input is a directory": (["--input", str(tmp_path)], "is a directory"),
        "empty input": (["--input", str(tmp_path / "empty.de")], "is empty"),
        "no run directory": (["--checkpoint", str(tmp_path / "no_run")], "no such directory"),
        "empty run directory": (["--checkpoint", str(tmp_path)], "no checkpoint"),
        "no tokenizer": (["--checkpoint", str(broken)], "no tokenizer (tokenizer.json is missing"),
        "no weights": (["--checkpoint", str(broken)], "model.safetensors: missing"),
    }[problem]
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(run_dir), *argv]
    if "--input" not in argv:
        argv = [*argv, "--input", str(good_input)]
    return argv, said


PROBLEMS = [
    "missing input",
    "input is a directory",
    "empty input",
    "no run directory",
    "empty run directory",
    "no tokenizer",
    "no weights",
]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_unusable_input_or_run_directory_is_one_line_and_status_1(
    problem, run_dir, tmp_path, capsys
):
    argv, said = make_problem(problem, run_dir, tmp_path)
    status = translate.main([*argv, "--output", str(tmp_path / "out.en")])
    err = capsys.readouterr().err.splitlines()
    assert status == 1
    assert (
        len(err) == 1
        and said in err[0]
        and err[0].startswith(f"{translate.program_name()}: error:")
    )
    assert not (tmp_path / "out.en").exists()


@pytest.mark.parametrize("spelling", ["same", "symlink", "hard link"])
def test_output_naming_the_input_file_is_refused_before_any_work_and_the_input_kept(
    spelling, run_dir, tmp_path, capsys
):
    source = tmp_path / "in.de"
    data = "".join(f"Ein Haus {n}.\n" for n in range(60)).encode()
    source.write_bytes(data)
    target = source
    if spelling == "symlink":
        target = tmp_path / "link.en"
        target.symlink_to(source)
    if spelling == "hard link":
        target = tmp_path / "link.en"
        target.hardlink_to(source)
    argv = ["--checkpoint", str(run_dir), "--input", str(source), "--output", str(target)]
    with pytest.raises(SystemExit) as exit_info:  # small windows: written while still reading
        translate.main([*argv, "--beam-size", "1", "--max-tokens", "8"])
    assert exit_info.value.code == 2
    assert "--output" in capsys.readouterr().err and source.read_bytes() == data


def test_empty_stdin_is_one_line_and_status_1(run_dir, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO()))
    assert translate.main(["--checkpoint", str(run_dir)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "stdin is empty: there is nothing to translate" in err[0]


def test_a_failure_at_line_n_names_it_and_leaves_the_lines_before_it_written(
    varied_run, tmp_path, capsys, monkeypatch
):
    translator_class = translate.Translator
    (boom,) = translator_class(varied_run).encode(["Zwei Hunde spielen im Schnee."])
    real = translator_class.translate_parts

    def failing(self, sources, *args):
        if any(parts == boom for parts in sources):
            raise RuntimeError("out of memory (simulated)")
        return real(self, sources, *args)

    monkeypatch.setattr(translator_class, "translate_parts", failing)
    lines = [
        "Ein Mann fährt Fahrrad.",
        "Eine Frau liest ein Buch.",
        "Zwei Hunde spielen im Schnee.",
    ]
    data = "\n".join([*lines, "Ein Buch."]).encode()
    status, out, err = run_translate(varied_run, tmp_path, data, capsys=capsys)
    assert status == 1
    translator = translator_class(varied_run)
    assert out == [*(translator.translate([line], 1)[0] for line in lines[:2]), ""]  # one by one
    assert len(err) == 1 and "line 3 of" in err[0] and "translation failed" in err[0]
    assert "RuntimeError: out of memory (simulated)" in err[0]


def test_each_window_is_written_before_the_next_lines_are_read(varied_run):
    translator = translate.Translator(varied_run)
    sentences = ["Ein Hund.", "Zwei Hunde.", "Ein Buch.", "Eine Frau.", "Ein Mann."]
    read, windows = [0], []

    def lines():
        for number, text in enumerate(sentences, start=1):
            read[0] = number
            yield translate.Line(number, text)

    def write(texts):
        windows.append((read[0] - len(texts), read[0], texts))

    settings = translate.Settings(beam_size=1, max_tokens=2)  # windows of about 8 tokens
    assert translate.translate_lines(translator, lines(), write, print, settings) == len(sentences)
    assert len(windows) > 2 and windows[0][1] < len(sentences)  # written while reading
    assert [start for start, _, _ in windows] == [0, *(end for _, end, _ in windows[:-1])]
    # A budget of 2 tokens makes each sentence a batch of its own, in the windows as here.
    written = [t for _, _, texts in windows for t in texts]
    assert written == translator.translate(sentences, 1, max_tokens=2) and len(set(written)) > 1


def test_typed_input_is_answered_line_by_line(varied_run):
    translator = translate.Translator(varied_run)
    writes = []
    lines = [translate.Line(n, text) for n, text in enumerate(["Ein Hund.", "Ein Buch."], 1)]
    settings = translate.Settings(beam_size=1, window_tokens=1)  # what a terminal's input gets
    translate.translate_lines(translator, lines, writes.append, print, settings)
    assert [len(texts) for texts in writes] == [1, 1]


def test_ctrl_c_exits_130_with_the_windows_done_written(varied_run, tmp_path, capsys, monkeypatch):
    real, calls = translate.Translator.translate_parts, []

    def interrupted_on_the_second_window(self, sources, *args):
        calls.append(sources)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, sources, *args)

    monkeypatch.setattr(translate.Translator, "translate_parts", interrupted_on_the_second_window)
    data = b"Ein Hund.\nEin Buch.\nEin Mann.\n"
    # --max-tokens 1: windows of 4 tokens, so each line is a window of its own
    status, out, err = run_translate(varied_run, tmp_path, data, "--max-tokens", "1", capsys=capsys)
    assert status == 130 and len(out) == 2 and out[0]  # the first window (line 1), written
    assert len(err) == 1 and "interrupted; the lines written so far are complete" in err[0]


def test_translator_refuses_text_a_tokenizer_cannot_read_naming_the_sentence(run_dir):
    translator = translate.Translator(run_dir)
    with pytest.raises(ValueError, match=r"sentences\[1\] is not valid Unicode"):
        translator.translate(["Ein Hund.", "kaputt \udcff"])
    with pytest.raises(TypeError, match=r"sentences\[0\] must be a str, got bytes"):
        translator.translate([b"Ein Hund."])


def test_translate_from_stdin_in_a_real_process_stops_at_a_bad_line_without_a_traceback(run_dir):
    data = b"Ein Hund.\n\nZwei Hunde.\n" + b"\xc3(kaputt\nEin Buch.\n"
    command = [sys.executable, "-m", "transformer.translation.translate"]
    done = subprocess.run(
        [*command, "--checkpoint", str(run_dir), "--beam-size", "1"],
        input=data,
        capture_output=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 1
    assert len(done.stdout.decode("utf-8").split("\n")) == 4  # three lines and a final newline
    err = done.stderr.decode()
    assert err.count("\n") == 1 and "line 4 of stdin: not valid UTF-8 (bytes c3" in err


# --- the attention-map command line -----------------------------------------------------------


def draw(run_dir: Path, tmp_path: Path, sentence: str, *extra: str) -> dict:
    out = tmp_path / "map.png"
    attention_maps.main(
        ["--checkpoint", str(run_dir), "--sentence", sentence, "--output", str(out),
         "--json", str(tmp_path / "map.json"), "--beam-size", "1", "--pieces", *extra]
    )  # fmt: skip
    return json.loads((tmp_path / "map.json").read_text())


def test_attention_map_sentence_not_utf8_is_refused_naming_it_or_replaced(
    run_dir, tmp_path, capsys
):
    sentence = b"Ein \xff Hund.".decode("utf-8", errors="surrogateescape")  # as from argv
    with pytest.raises(SystemExit) as exit_info:
        draw(run_dir, tmp_path, sentence)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert "--sentence: not valid UTF-8 (bytes ff at byte 5)" in err and "--errors replace" in err
    saved = draw(run_dir, tmp_path, sentence, "--errors", "replace")
    assert saved["source"] == "Ein \ufffd Hund."
    assert "--sentence: invalid UTF-8" in capsys.readouterr().err


def test_attention_map_sentence_longer_than_the_model_takes_is_cut_with_a_warning(
    run_dir, tmp_path, capsys
):
    saved = draw(run_dir, tmp_path, "Zwei Hunde spielen im Schnee.", "--max-length", "4")
    assert len(saved["key_tokens"]) <= 4
    assert saved["source"] and "Zwei Hunde spielen im Schnee.".startswith(saved["source"])
    err = capsys.readouterr().err
    assert "--sentence has" in err and "longer than the 4 the model takes" in err
    assert "tokens only (cut at a word boundary)" in err


def test_attention_map_sentence_of_control_characters_only_is_refused_as_empty(
    run_dir, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        draw(run_dir, tmp_path, "\x00\x01")
    assert exit_info.value.code == 1
    assert "error: --sentence is empty" in capsys.readouterr().err


def test_translate_reads_the_run_config_training_writes():
    from transformer.translation.training import CONFIG_FILE, TrainConfig

    assert translate.RUN_CONFIG_FILE == CONFIG_FILE
    assert translate.training_max_length("/nowhere") == TrainConfig.max_length


def test_read_lines_stops_at_the_first_bad_line_after_yielding_the_ones_before():
    lines = read_lines(iter([b"eins\n", b"zwei\n", b"\xe4drei\n", b"vier\n"]), "x.de")
    assert [next(lines).text, next(lines).text] == ["eins", "zwei"]
    with pytest.raises(BadInput, match=r"line 3 of x.de: not valid UTF-8 \(bytes e4 at byte 1\)"):
        next(lines)


@pytest.mark.parametrize("errors", ["strict", "replace"])
def test_a_utf16_input_is_named_as_utf16_with_the_conversion_to_run(errors):
    """Windows PowerShell's `>` writes UTF-16: the message said to convert from latin1, which
    makes garbage of it, and --errors replace translated NULs and halves of characters."""
    stream = io.BytesIO("Ein Hund.\nZwei Katzen.\n".encode("utf-16"))
    with pytest.raises(BadInput, match=r"in\.de is UTF-16 .*not UTF-8.*iconv -f utf-16 -t utf-8"):
        next(read_lines(stream, "in.de", errors))
