"""train.py's parser, built from TrainConfig's field metadata: every option fills its field, the
defaults are the configuration's, and the help says what the hand-written parser said."""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for train.py

import train as train_cli  # noqa: E402
from transformer.translation.training import TrainConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("fast_machine")  # conftest.py: no machine is timed


def config_of(argv: list[str]) -> TrainConfig:
    return train_cli.config_from_args(train_cli.build_parser().parse_args(argv))


def test_no_options_give_the_configuration_defaults():
    config, defaults = config_of([]), TrainConfig()
    assert config.model.d_model == 256 and config.model.encoder_layers == 3  # the cpu preset
    assert config.sizing.preset == "cpu"
    assert dataclasses.replace(config, model=defaults.model, sizing=None) == defaults


def test_every_option_field_has_an_option_that_fills_it():
    dests = {action.dest for action in train_cli.build_parser()._actions}
    assert set(train_cli.TRAIN_OPTIONS) <= dests
    assert len(train_cli.TRAIN_OPTIONS) == 34
    assert config_of([]).kernel_warmup
    config = config_of(
        ["--lr", "1e-3", "--max-steps", "7", "--eval-every", "3", "--seed", "5"]
        + ["--no-progress", "--no-epoch-eval", "--no-final-test", "--compile"]
        + ["--no-kernel-warmup"]
        + ["--schedule", "inverse-sqrt", "--label-smoothing", "0.2", "--val-limit", "9"]
    )
    assert (config.lr, config.max_steps, config.eval_every, config.seed) == (1e-3, 7, 3, 5)
    assert not config.progress and not config.eval_at_epoch_end and not config.final_test
    assert config.compile and config.schedule == "inverse-sqrt" and not config.kernel_warmup
    assert (config.label_smoothing, config.val_limit) == (0.2, 9)


def test_help_shows_each_default_once_and_every_presets_values():
    text = " ".join(train_cli.build_parser().format_help().split())  # unwrapped
    assert "(default: None)" not in text and "{default}" not in text and "{presets}" not in text
    assert "padded tokens per batch (cpu 2048, cpu-small 2048, base 8192)" in text
    assert "incl. validation (cpu 9.0, cpu-small 9.0, base none)" in text
    assert "seed of initialization, batch order and dropout (default: 1)" in text
    assert "shared BPE vocabulary size (cpu 6000, cpu-small 4000, base 6000)" in text
    assert "(default: 6000)" not in text  # the presets say it; the formatter does not again
    assert "--no-progress no progress bar --compile" in text


def test_bad_options_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, message in (
        (["--device", "cuda", "--run-dir", str(tmp_path / "run")], "CUDA is not available"),
        (["--lr", "0"], "must be positive"),
        (["--attention", "flash"], "invalid choice"),
        (["--data", str(tmp_path / "nowhere")], "no such directory"),
        (["--resume", str(tmp_path)], "not a run directory"),
        (["--heads", "3"], "divisible"),
    ):
        with pytest.raises(SystemExit):
            train_cli.main(argv)
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [(["--src-lang", "en"], "both 'en'"), (["--tgt-lang", " "], "must name a language")],
)
def test_a_language_pair_that_is_not_two_languages_is_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        config_of(argv)


@pytest.mark.parametrize("flag", ["--resume", "--run-dir", "--name"])
def test_an_empty_path_option_is_refused_not_read_as_absent(flag, tmp_path, capsys, monkeypatch):
    """An empty --resume used to start a new full run in runs/<timestamp>."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main([flag, "", "--max-steps", "1"])
    assert exit_info.value.code == 2 and f"{flag} is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "argv",
    [
        ["--lr", "inf"],
        ["--weight-decay", "nan"],
        ["--length-penalty", "nan"],
        ["--clip-norm", "inf"],
    ],
)
def test_an_option_that_is_not_a_finite_number_is_refused(argv):
    """nan and inf passed every comparison check: --lr inf trained to a NaN loss, exit 0."""
    with pytest.raises(ValueError, match="must be a finite number"):
        config_of(argv)


def test_model_options_are_fields_that_fill_the_model_config():
    from transformer.config import ModelConfig
    from transformer.translation.training.config import ModelOptions

    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(train_cli.MODEL_OPTIONS) <= model_fields  # named like what they fill
    config = config_of(
        ["--attention", "sdpa", "--score", "dot", "--d-model", "96", "--heads", "3"]
        + ["--encoder-layers", "1", "--decoder-layers", "2", "--d-ff", "80", "--dropout", "0.2"]
        + ["--attention-dropout", "0.1", "--no-tie-embeddings"]
    )
    assert ModelOptions(backend="sdpa", score="dot", d_model=96, heads=3, encoder_layers=1,
                        decoder_layers=2, d_ff=80, dropout=0.2, attention_dropout=0.1,
                        tie_embeddings=False).given() == {
        name: getattr(config.model, name) for name in train_cli.MODEL_OPTIONS
    }  # fmt: skip


def test_preset_values_come_from_the_one_preset_table():
    from transformer.translation.training.config import PRESETS

    text = " ".join(train_cli.build_parser().format_help().split())
    widths = ", ".join(f"{name} {preset.model['d_model']}" for name, preset in PRESETS.items())
    assert f"model width ({widths})" in text
    for name, preset in PRESETS.items():
        config = config_of(["--config", name])
        assert {k: getattr(config.model, k) for k in preset.model} == preset.model
        assert {k: getattr(config, k) for k in preset.training} == preset.training


def test_the_additive_score_takes_naive_attention_where_a_preset_picks_sdpa(monkeypatch, capsys):
    """cpu-small's backend is SDPA, which cannot compute the additive score: before, --score
    additive failed on any machine auto-sizing sent to cpu-small, naming no option of its own."""
    from transformer.translation.training import sizing

    monkeypatch.setattr(sizing, "measure_gflops", lambda dtype: sizing.FAST_GFLOPS / 2)
    assert config_of([]).sizing.preset == "cpu-small"  # this machine, as the test makes it
    config = config_of(["--score", "additive"])
    assert config.sizing.preset == "cpu-small" and config.model.backend == "naive"
    assert config_of(["--config", "cpu-small", "--score", "additive"]).model.backend == "naive"
    assert config_of(["--config", "cpu-small", "--score", "dot"]).model.backend == "sdpa"
    with pytest.raises(ValueError, match="SDPA cannot compute"):  # asked for: refused
        config_of(["--config", "cpu-small", "--score", "additive", "--attention", "sdpa"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--greedy", "--beam-size", "4"], "--greedy contradicts --beam-size 4"),
        (["--val-beam-size", "3", "--greedy"], "--greedy contradicts --val-beam-size 3"),
        (["--no-time-budget", "--time-budget", "5"], "--no-time-budget contradicts --time-budget"),
    ],
)
def test_a_flag_beside_an_option_it_contradicts_is_refused(argv, message, tmp_path, capsys):
    """Before, the flag won silently (--greedy --beam-size 4 decoded with beam 1)."""
    with pytest.raises(SystemExit) as exit_:
        # no --data directory either: without the check this is refused at once, never trains
        train_cli.main(["--config", "cpu", "--data", str(tmp_path / "none"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    agreeing = config_of(["--config", "cpu", "--greedy", "--beam-size", "1"])
    assert agreeing.beam_size == agreeing.val_beam_size == 1


def test_resume_refuses_a_model_option_by_its_flag(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        train_cli.main(["--resume", str(tmp_path), "--attention", "sdpa", "--lr", "1e-3"])
    assert "these options would change it: --attention, --lr" in capsys.readouterr().err


def test_resume_refusing_an_option_names_those_it_may_change(tmp_path, capsys):
    """The refusal used to say only which options would change the run, not what may."""
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        train_cli.main(["--resume", str(tmp_path), "--seed", "2"])
    err = capsys.readouterr().err
    assert "only these may change on --resume: --checkpoint-every, --compile, --device," in err
    assert "--time-budget; to change the others, start a new run" in err
