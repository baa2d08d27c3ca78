"""translate.py: it reads a checkpoint train.py wrote (file and stdin/stdout, blank lines kept, the
same as translating in-process), refuses an unusable device before loading, and its --help
shows each default once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py


import train as train_cli  # noqa: E402
from transformer.translation import translate  # noqa: E402
from transformer.translation.checkpoint import load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_machine")


def test_translate_reads_a_checkpoint_written_by_train_py(corpus, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    argv = [
        "--run-dir", str(run_dir), "--data", str(corpus), "--d-model", "64", "--heads", "2",
        "--encoder-layers", "1", "--decoder-layers", "1", "--d-ff", "128", "--vocab-size", "400",
        "--max-tokens", "256", "--max-steps", "30", "--threads", "1", "--no-progress",
        "--beam-size", "2", "--warmup-steps", "10", "--amp", "off",
    ]  # fmt: skip
    assert train_cli.main(argv) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert {"test_bleu", "test_bleu_lc", "val_bleu", "val_bleu_lc"} <= set(results)
    assert (run_dir / "curves.png").stat().st_size > 0
    assert capsys.readouterr().err.splitlines()[0] == f"run directory: {run_dir}"

    sentences = (corpus / "test_2016_flickr.de").read_text().splitlines()[:5]
    lines = [sentences[0], "", *sentences[1:]]
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n")
    args = ["--checkpoint", str(run_dir), "--beam-size", "2"]
    assert (
        translate.main(
            [*args, "--input", str(tmp_path / "in.de"), "--output", str(tmp_path / "new/out.en")]
        )
        == 0
    )
    out = (tmp_path / "new" / "out.en").read_text().split("\n")  # its directory was made
    assert len(out) == len(lines) + 1 and out[-1] == "" and out[1] == ""

    # The same through stdin/stdout, and the same as translating in-process.
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("\n".join(lines) + "\n"))
    assert translate.main(args) == 0
    assert capsys.readouterr().out.split("\n") == out
    direct = translate.Translator(run_dir).translate(sentences, beam_size=2)
    assert [out[0], *out[2:-1]] == direct

    # The checkpoint is self-contained: weights load by name into a fresh model.
    weights = load_file(load_checkpoint(run_dir, "best").directory / "model.safetensors")
    assert any(name.startswith("encoder.") for name in weights)


def test_translate_refuses_an_unusable_device_before_loading(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        translate.main(["--checkpoint", str(tmp_path), "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


@pytest.mark.parametrize("alpha", ["nan", "inf", "-inf"])
def test_translate_refuses_a_length_penalty_that_is_not_finite(alpha, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        translate.main(["--checkpoint", str(tmp_path), f"--length-penalty={alpha}"])
    assert exit_info.value.code == 2
    assert "--length-penalty must be a finite number" in capsys.readouterr().err


@pytest.mark.parametrize("started_as", ["/usr/bin/flash-transformer-translate", "translate.py"])
def test_translate_names_itself_as_it_was_started(started_as, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [started_as])
    with pytest.raises(SystemExit):
        translate.main(["--bogus"])
    command = Path(started_as).name if "flash" in started_as else translate.MODULE_COMMAND
    assert capsys.readouterr().err.startswith(f"usage: {command} ")


def test_translate_help_shows_each_default_once():
    text = " ".join(translate.build_parser().format_help().split())  # unwrapped
    assert "(default: None)" not in text
    assert "(default: stdin) (" not in text and "(default: stdout) (" not in text
    assert "(default: best)" in text and "(default: 4)" in text
