"""The command line the five benchmark scripts share (benchmarks/common/options.py and
records.py): where a --replot writes and what it says it wrote, the results files it accepts,
the sizes and lengths the scripts refuse, the --quick run's file names, the results files' mode,
and the run's provenance heading every markdown table. Nothing here measures anything: replots
draw committed results, and the one measuring run has its sweep replaced."""

import argparse
import importlib
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from benchmarks.common import options, records

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
# A committed results file of each script.
SOURCES = {
    "additive": "additive_cpu.json",
    "attention": "attention_cpu.json",
    "model": "model_cpu.json",
    "varlen": "varlen_memory.json",
    "window": "window_cpu.json",
}
# The files a replot draws, beside the JSON (varlen writes no markdown; window a CSV too).
DRAWN = {
    "additive": (".png", ".md"),
    "attention": (".png", ".md"),
    "model": (".png", ".md"),
    "varlen": (".png",),
    "window": (".csv", ".png", ".md"),
}


def script(benchmark: str):
    return importlib.import_module(f"benchmarks.{benchmark}_benchmark")


def source(benchmark: str, directory: Path) -> Path:
    """A copy of the benchmark's committed results file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(RESULTS / SOURCES[benchmark], directory))


def replot(benchmark: str, capsys, *argv) -> list[Path]:
    """Run the script's --replot; the files its last line says it wrote."""
    script(benchmark).main(["--replot", *map(str, argv)])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("wrote "), last
    first, *suffixes = re.split(r", | and ", last.removeprefix("wrote "))
    stem = Path(first).with_suffix("")
    return [Path(first), *(Path(f"{stem}{suffix}") for suffix in suffixes)]


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.mark.parametrize("benchmark", sorted(SOURCES))
def test_replot_writes_to_out_dir_under_tag_with_the_json_and_leaves_the_source_alone(
    benchmark, tmp_path, capsys
):
    src = source(benchmark, tmp_path / "src")
    before = snapshot(src.parent)
    written = replot(benchmark, capsys, src, "--out-dir", tmp_path / "out", "--tag", "again")
    assert snapshot(src.parent) == before
    expected = {tmp_path / "out" / f"again{s}" for s in (".json", *DRAWN[benchmark])}
    assert set((tmp_path / "out").iterdir()) == expected
    assert set(written) == expected
    assert json.loads((tmp_path / "out" / "again.json").read_text()) == json.loads(src.read_text())


@pytest.mark.parametrize("benchmark", sorted(SOURCES))
def test_replot_by_default_draws_beside_the_json_under_its_name_and_says_only_what_it_wrote(
    benchmark, tmp_path, capsys
):
    src = source(benchmark, tmp_path)
    before = src.read_bytes(), src.stat().st_mtime_ns
    written = replot(benchmark, capsys, src)
    assert (src.read_bytes(), src.stat().st_mtime_ns) == before  # not rewritten, nor said to be
    assert set(written) == {tmp_path / f"{src.stem}{s}" for s in DRAWN[benchmark]}
    assert set(tmp_path.iterdir()) == {src, *written}


def test_replot_with_only_a_tag_or_only_an_out_dir_takes_the_rest_from_the_json(tmp_path, capsys):
    src = source("window", tmp_path / "src")
    tagged = replot("window", capsys, src, "--tag", "again")
    assert set(tagged) == {src.parent / f"again{s}" for s in (".json", ".csv", ".png", ".md")}
    moved = replot("window", capsys, src, "--out-dir", tmp_path / "out")
    assert set(moved) == {tmp_path / "out" / f"window_cpu{s}" for s in (".json", *DRAWN["window"])}


def other_benchmarks_file(benchmark: str, path: Path) -> None:
    other = next(b for b in sorted(SOURCES) if b != benchmark)
    shutil.copy(RESULTS / SOURCES[other], path)


BAD_FILES = {
    "missing": lambda benchmark, path: None,
    "corrupt": lambda benchmark, path: path.write_text('{"benchmark": '),
    "a list": lambda benchmark, path: path.write_text("[]"),
    "another benchmark's": other_benchmarks_file,
}


@pytest.mark.parametrize("case", list(BAD_FILES))
@pytest.mark.parametrize("benchmark", sorted(SOURCES))
def test_replot_of_a_missing_corrupt_or_foreign_file_is_a_one_line_usage_error_naming_it(
    benchmark, case, tmp_path, capsys
):
    path = tmp_path / "results.json"
    BAD_FILES[case](benchmark, path)
    with pytest.raises(SystemExit) as exit_:
        script(benchmark).main(["--replot", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err.strip().splitlines()[-1] and str(path) in err.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == ([] if case == "missing" else [path])


@pytest.mark.parametrize("under", [False, True], ids=["a-file", "under-a-file"])
@pytest.mark.parametrize("benchmark", sorted(SOURCES))
def test_an_out_dir_that_is_a_file_or_under_one_is_a_one_line_usage_error_before_measuring(
    benchmark, under, tmp_path, capsys
):
    """It was a FileExistsError traceback (exit 1) after the whole measurement. parse_args is
    the scripts' first step, so a refusal there comes before anything is measured."""
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    out_dir, named = (
        (taken / "results", f"{taken / 'results'}: {taken}") if under else (taken, taken)
    )
    with pytest.raises(SystemExit) as exit_:
        script(benchmark).parse_args(["--device", "cpu", "--out-dir", str(out_dir)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.endswith(f"error: argument --out-dir: {named} is a file, not a directory"), last
    new = tmp_path / "new" / "dir"  # a directory still to be made is fine
    assert script(benchmark).parse_args(["--out-dir", str(new)]).out_dir == new


def test_a_replot_to_an_out_dir_that_is_a_file_is_a_usage_error_and_leaves_the_file(
    tmp_path, capsys
):
    src = source("window", tmp_path / "src")
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    with pytest.raises(SystemExit) as exit_:
        script("window").main(["--replot", str(src), "--out-dir", str(taken)])
    assert exit_.value.code == 2
    assert "is a file, not a directory" in capsys.readouterr().err.strip().splitlines()[-1]
    assert taken.read_text() == "mine\n" and set(tmp_path.iterdir()) == {src.parent, taken}


SIZE_OPTIONS = [
    *(("attention", o) for o in ("--min-len", "--max-len", "--batch", "--heads", "--tokens",
                                 "--hidden", "--head-dims", "--cpu-repeats",
                                 "--cpu-memory-cap-mib")),
    *(("additive", o) for o in ("--min-len", "--max-len", "--batch", "--heads", "--head-dim",
                                "--cpu-repeats")),
    *(("model", o) for o in ("--lengths", "--batch", "--heads", "--d-model", "--d-ff",
                             "--layers", "--vocab", "--cpu-repeats")),
    *(("varlen", o) for o in ("--min-len", "--max-len", "--batch", "--heads", "--head-dim")),
]  # fmt: skip


@pytest.mark.parametrize("value", ["0", "-4"])
@pytest.mark.parametrize("benchmark, option", SIZE_OPTIONS)
def test_a_size_or_length_below_one_is_a_usage_error_not_the_default(
    benchmark, option, value, capsys
):
    with pytest.raises(SystemExit) as exit_:
        script(benchmark).parse_args([option, value])
    assert exit_.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err


@pytest.mark.parametrize("benchmark", ["additive", "attention", "varlen", "window"])
def test_min_len_over_max_len_is_a_usage_error_before_anything_is_written(
    benchmark, tmp_path, capsys, restores_process_state
):
    argv = ["--device", "cpu", "--min-len", "512", "--max-len", "256", "--out-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_:
        script(benchmark).main(argv)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in last and "--min-len 512" in last and "256" in last
    assert list(tmp_path.iterdir()) == []


def test_doubling_refuses_a_start_below_one_or_past_the_stop():
    def stuck(signum, frame):
        raise TimeoutError("doubling(0, 8) never ends")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 0.5)  # a loop that never ends: stopped, not waited on
    try:
        for start, stop in ((0, 8), (-2, 8), (16, 8)):
            with pytest.raises(ValueError):
                options.doubling(start, stop)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert options.doubling(3, 12) == [3, 6, 12]
    assert options.doubling(8, 8) == [8]


def test_quick_run_without_a_tag_writes_quick_files_not_the_full_runs(
    tmp_path, monkeypatch, capsys, restores_process_state
):
    window = script("window")
    monkeypatch.setattr(window, "sweep", lambda args, device, on_point=None: [])
    monkeypatch.setattr(options, "RESULTS_DIR", tmp_path)  # where the run goes without --out-dir
    payload = window.main(["--quick", "--device", "cpu"])
    assert {p.name for p in tmp_path.iterdir()} == {
        f"window_cpu_quick{s}" for s in (".json", ".csv", ".png", ".md")
    }
    assert payload["settings"]["out_dir"] == str(tmp_path)
    window.main(["--quick", "--device", "cpu", "--tag", "mine"])
    assert (tmp_path / "mine.json").is_file() and not (tmp_path / "mine_quick.json").exists()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_results_files_get_the_mode_a_plain_open_gives_under_the_umask(mask, tmp_path):
    previous = os.umask(mask)
    try:
        records.write_text_atomic(tmp_path / "atomic.json", "{}\n")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}\n")
    finally:
        os.umask(previous)
    mode = (tmp_path / "atomic.json").stat().st_mode & 0o777
    assert mode == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("benchmark", ["additive", "attention", "model", "window"])
def test_every_markdown_opens_with_the_runs_device_versions_date_and_command(
    benchmark, tmp_path, capsys
):
    src = source(benchmark, tmp_path / "src")
    script(benchmark).main(["--replot", str(src), "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    first = (tmp_path / "out" / f"{src.stem}.md").read_text().splitlines()[0]
    env = json.loads(src.read_text())["environment"]
    for part in (env["device_name"], f"torch {env['torch']}", f"triton {env['triton']}",
                 env["date"], env["command"]):  # fmt: skip
        assert part in first, part
    assert printed.splitlines()[0] == first


def test_provenance_says_what_the_environment_has_and_leaves_out_what_it_lacks():
    line = records.provenance({"torch": "2.5.0", "date": "2026-01-02T03:04:05+00:00"})
    assert "torch 2.5.0" in line and "2026-01-02" in line
    assert "None" not in line and "triton" not in line
    assert records.provenance({})  # a line still, however bare
    line = records.provenance({"device_name": "GPU X", "driver": None, "command": "python -m b"})
    assert "GPU X" in line and "`python -m b`" in line and "driver" not in line


def test_committed_markdown_opens_with_the_provenance_of_its_json():
    for path in sorted(RESULTS.glob("*.json")):
        markdown = path.with_suffix(".md")
        if markdown.exists():
            env = json.loads(path.read_text())["environment"]
            first = markdown.read_text().splitlines()[0]
            assert first == records.provenance(env), markdown.name


def test_additive_min_len_help_gives_the_cuda_and_the_cpu_default(capsys):
    with pytest.raises(SystemExit):
        script("additive").parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "512 on CUDA, 256 on the CPU" in text


def test_an_unset_out_dir_is_none_so_a_replot_can_tell_it_was_not_given():
    for benchmark in SOURCES:
        args = script(benchmark).parse_args([])
        assert args.out_dir is None and args.tag is None, benchmark
    args = argparse.Namespace(replot=Path("a/b.json"), out_dir=None, tag=None)
    assert options.replot_stem(args) == Path("a/b")


@pytest.mark.parametrize(
    "values",
    [[1133, 1484, 1613, 1657, 1327, 912], [1300, 2500, 3600, 900], [1, 10, 100, 1000, 10_000]],
    ids=["under-2x", "within-a-decade", "four-decades"],
)
def test_a_log_axis_labels_at_least_three_ticks_whatever_its_range(values):
    """model_cpu.png's tokens/s panel (912 to 1,657) used to carry one label, 1000."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common.plotting import log_axes

    fig, ax = plt.subplots()
    ax.plot(range(1, len(values) + 1), values)
    log_axes(ax, True)
    fig.canvas.draw()
    low, high = ax.get_ylim()
    labels = [t.get_text() for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]
    plt.close(fig)
    assert len([label for label in labels if label]) >= 3, labels


def _crashing_at_the_second_length(record_of):
    """A stand-in for a script's point measurement: ``record_of(*args)`` at the first sequence
    length, a crash at the next (every point at the first length finishes)."""
    lengths = []

    def measure(*args):
        spec = next((arg for arg in args if isinstance(arg, dict)), None)
        lengths.append(spec["seq_len"] if spec else args[1])  # window's: (variant, length, ...)
        if lengths[-1] != lengths[0]:
            raise RuntimeError("the second length crashed")
        return record_of(*args)

    return measure


@pytest.mark.parametrize("benchmark", ["additive", "attention", "model", "window"])
def test_a_run_that_crashes_midway_keeps_its_finished_points_in_a_partial_results_file(
    benchmark, tmp_path, monkeypatch, restores_process_state
):
    done = {"status": "unavailable", "note": "a stand-in point"}
    if benchmark == "attention":
        sweep = importlib.import_module("benchmarks.attention_sweep")
        records_of = lambda *args: {key: dict(done) for key in sweep.KEYS}  # noqa: E731
        monkeypatch.setattr(sweep, "point_records", _crashing_at_the_second_length(records_of))
    else:
        name = {"additive": "run_point", "model": "run_isolated", "window": "measure"}[benchmark]
        measure = _crashing_at_the_second_length(lambda *args: dict(done))
        monkeypatch.setattr(script(benchmark), name, measure)
    # Every point is a stand-in: the default lengths cost nothing (window's --quick: fewer).
    argv = ["--device", "cpu", "--out-dir", str(tmp_path)] + ["--quick"] * (benchmark == "window")
    with pytest.raises(RuntimeError, match="the second length crashed"):
        script(benchmark).main(argv)
    (results,) = tmp_path.glob("*.json")
    payload = json.loads(results.read_text())
    assert payload["benchmark"] == benchmark and payload["partial"] is True
    kept = [r for r in payload["records"] if r.get("note") == "a stand-in point"]
    assert kept, payload["records"]
