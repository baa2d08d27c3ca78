"""Attention maps written to files: the PNG has the promised size, the JSON and CSV hold the
drawn weights, and the command line writes them, refusing bad values with a clear message."""

import csv
import json

import pytest
import torch
from attention_map_helpers import save_untrained_run, tiny_model, train_small_tokenizer
from matplotlib import image as mpimg

from transformer.translation.attention_maps import (
    build_parser,
    figure_size,
    main,
    plot_map,
    sentence_map,
    write_csv,
    write_json,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_small_tokenizer()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    """A run directory as training writes it, holding an untrained model."""
    return save_untrained_run(tmp_path_factory.mktemp("run"), tokenizer)


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_png_has_the_size_figure_size_promises(tmp_path, tokenizer, grid):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    result = sentence_map(model, tokenizer, "Zwei Hunde spielen.", "cross", grid=grid, beam_size=1)
    path = tmp_path / "map.png"
    plot_map(result, path, dpi=50)
    pixels = mpimg.imread(path)
    grid_shape = (2, 4) if grid else (1, 1)
    width, height = figure_size(*result.weights.shape[-2:], *grid_shape)
    assert pixels.shape[:2] == (round(height * 50), round(width * 50))
    assert pixels[..., :3].std() > 0.05  # something was drawn


def test_json_and_csv_hold_the_drawn_weights(tmp_path, tokenizer):
    model = tiny_model(vocab=tokenizer.get_vocab_size())
    result = sentence_map(model, tokenizer, "Eine Frau liest.", "cross", layer=1, grid=True)
    write_json(result, tmp_path / "map.json")
    write_csv(result, tmp_path / "map.csv")
    saved = json.loads((tmp_path / "map.json").read_text())
    torch.testing.assert_close(torch.tensor(saved["weights"]), result.weights)
    assert saved["query_tokens"] == result.query_tokens
    assert saved["layers"] == [1] and saved["heads"] == [0, 1, 2, 3]
    assert saved["units"] == "words"
    assert ["".join(p).replace("▁", "") for p in saved["key_pieces"]] == saved["key_tokens"]
    with open(tmp_path / "map.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result.weights.numel()
    row = rows[-1]
    assert (row["layer"], row["head"], row["key_token"]) == ("1", "3", result.key_tokens[-1])
    assert float(row["weight"]) == pytest.approx(float(result.weights[0, 3, -1, -1]))
    assert {r["units"] for r in rows} == {"words"}


# --- command line -----------------------------------------------------------------------------


def test_command_writes_png_json_and_csv(tmp_path, run_dir, capsys):
    out = tmp_path / "map.png"
    main(
        ["--checkpoint", str(run_dir), "--sentence", "Ein Mann fährt Fahrrad.", "--output",
         str(out), "--json", str(tmp_path / "m.json"), "--csv", str(tmp_path / "m.csv"),
         "--beam-size", "2", "--kind", "decoder", "--layer", "1", "--head", "0"]
    )  # fmt: skip
    assert mpimg.imread(out).ndim == 3
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["kind"] == "decoder" and saved["layer"] == 1 and saved["head"] == 0
    assert saved["units"] == "words"
    assert (tmp_path / "m.csv").stat().st_size > 0
    assert "wrote" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--layer", "5"], "layer 5 is out of range"),
        (["--head", "-9"], "head -9 is out of range"),
        (["--beam-size", "0"], "--beam-size must be >= 1"),
        # before: a matplotlib traceback after the work; without an extension it wrote x.png
        (["--output", "x.txt"], "'.txt' is not an image format; use one of"),
        (["--output", "x"], "x: no file extension; use one of"),
    ],
)
def test_command_rejects_bad_values_with_a_clear_message(tmp_path, run_dir, capsys, extra, message):
    argv = [
        "--checkpoint",
        str(run_dir),
        "--sentence",
        "Ein Hund.",
        "--output",
        str(tmp_path / "x.png"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + extra)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("option", ["--sentence", "--translation"])
@pytest.mark.parametrize(
    "text", ["", " ", "\x01", "\x00\x01"], ids=["empty", "blank", "ctrl", "ctrls"]
)
def test_blank_or_control_character_text_is_refused_as_empty_with_status_1_before_loading(
    tmp_path, capsys, option, text
):
    """The documented status for a text that cannot be used is 1; an empty or blank one gave 2
    while one of control characters only (read as spaces) gave 1."""
    argv = ["--checkpoint", str(tmp_path / "nowhere"), "--sentence", "Ein Hund.", option, text]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output", str(tmp_path / "x.png")])
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].endswith(f"error: {option} is empty")  # not the missing checkpoint
    assert all("warning" in line for line in lines[:-1])  # control characters are said to be
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"--output": "m.png", "--json": "m.png", "--csv": "m.png"},
         "--output m.png and --json m.png are the same file"),
        ({"--output": "m.png", "--json": "m.json", "--csv": "d/../m.json"},
         "--json m.json and --csv d/../m.json are the same file"),
        ({"--output": "m.png", "--csv": "ABSOLUTE/m.png"},
         "--output m.png and --csv ABSOLUTE/m.png are the same file"),
    ],
    ids=["all-three", "through-a-parent", "relative-and-absolute"],
)  # fmt: skip
def test_outputs_naming_the_same_file_are_a_usage_error_before_any_work(
    tmp_path, capsys, monkeypatch, outputs, message
):
    """They overwrote each other, and the command said it wrote each of them."""
    monkeypatch.chdir(tmp_path)
    argv = ["--checkpoint", str(tmp_path / "nowhere"), "--sentence", "Ein Hund."]
    for option, path in outputs.items():
        argv += [option, path.replace("ABSOLUTE", str(tmp_path))]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("error: " + message.replace("ABSOLUTE", str(tmp_path))), last
    assert list(tmp_path.iterdir()) == []


def test_command_writes_the_format_its_extension_names(tmp_path, run_dir, capsys):
    main(["--checkpoint", str(run_dir), "--sentence", "Ein Hund.", "--output",
          str(tmp_path / "m.svg")])  # fmt: skip
    assert (tmp_path / "m.svg").read_text().lstrip().startswith("<?xml")
    assert f"wrote {tmp_path / 'm.svg'}" in capsys.readouterr().err


def test_command_makes_the_directories_of_its_outputs(tmp_path, run_dir):
    out = tmp_path / "a" / "map.png"
    main(
        ["--checkpoint", str(run_dir), "--sentence", "Ein Hund.", "--beam-size", "1",
         "--output", str(out), "--json", str(tmp_path / "b" / "m.json"),
         "--csv", str(tmp_path / "c" / "d" / "m.csv")]
    )  # fmt: skip
    assert out.stat().st_size > 0
    assert (tmp_path / "b" / "m.json").stat().st_size > 0
    assert (tmp_path / "c" / "d" / "m.csv").stat().st_size > 0


def test_command_refuses_an_unusable_device(tmp_path, run_dir, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(run_dir), "--sentence", "Ein Hund.", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


def test_command_names_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "nowhere"), "--sentence", "Ein Hund."])
    assert "cannot load --checkpoint" in capsys.readouterr().err


def test_help_explains_every_option():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for option in action.option_strings:
            assert option in text


def test_command_draws_pieces_with_the_pieces_option(tmp_path, run_dir):
    main(
        ["--checkpoint", str(run_dir), "--sentence", "Ein Hund.", "--beam-size", "1",
         "--output", str(tmp_path / "m.png"), "--json", str(tmp_path / "m.json"), "--pieces"]
    )  # fmt: skip
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["units"] == "pieces" and "▁Ein" in saved["key_tokens"]
