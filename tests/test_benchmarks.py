"""The benchmark scripts' CPU paths, end to end on tiny settings.

Nothing here times anything or looks at a timing: it checks that each script runs, writes JSON
with the environment metadata, marks out-of-memory and not-measurable points as such, and writes
its PNG and markdown table.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STATUSES = {"ok", "oom", "unsupported", "not_measurable", "unavailable", "skipped", "error"}
ENVIRONMENT_KEYS = {"device_type", "device_name", "driver", "torch", "triton", "date", "command"}


def invocation(module: str, form: str) -> tuple[list[str], Path]:
    """The command line and working directory that run ``module`` in ``form``: ``module``
    (``python -m benchmarks.x`` from the repository root) or ``file`` (``python
    benchmarks/x.py``, as a newcomer types it, here from another directory)."""
    if form == "module":
        return [sys.executable, "-m", module], REPO
    return [sys.executable, str(REPO / (module.replace(".", "/") + ".py"))], REPO.parent


def run_script(module: str, out_dir: Path, *args: str, form: str = "module") -> dict:
    """Run the benchmark ``module`` on the CPU (see :func:`invocation`); its JSON payload."""
    command, cwd = invocation(module, form)
    command += ["--device", "cpu", "--out-dir", str(out_dir), *args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    stem = "bench"
    assert "| length |" in done.stdout or "| head dim |" in done.stdout  # the markdown table
    for suffix in (".json", ".png", ".md"):
        path = out_dir / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing"
    return json.loads((out_dir / f"{stem}.json").read_text())


def check_environment(payload: dict, benchmark: str) -> None:
    assert payload["benchmark"] == benchmark
    env = payload["environment"]
    assert ENVIRONMENT_KEYS <= set(env)
    assert env["device_type"] == "cpu"
    assert env["torch"] and env["device_name"]
    module = module_name(benchmark)
    assert module in env["command"] or module.replace(".", "/") + ".py" in env["command"]


def module_name(benchmark: str) -> str:
    return f"benchmarks.{benchmark}_benchmark"


SCRIPTS = sorted(
    f"benchmarks.{path.stem}"
    for path in (REPO / "benchmarks").glob("*.py")
    if path.stem.endswith("_benchmark")
)


def test_every_benchmark_script_is_covered():
    assert SCRIPTS == [module_name(name) for name in ("additive", "attention", "model", "varlen")]


@pytest.mark.parametrize("form", ["module", "file"])
@pytest.mark.parametrize("module", SCRIPTS)
def test_help_runs_as_a_module_and_as_a_file(module, form):
    command, cwd = invocation(module, form)
    done = subprocess.run([*command, "--help"], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout


@pytest.mark.parametrize("module", SCRIPTS)
def test_every_option_has_help_and_defaults_show_once(module, monkeypatch):
    import argparse
    import importlib

    parsers = []
    parse = argparse.ArgumentParser.parse_args

    def spy(self, args=None, namespace=None):
        parsers.append(self)
        return parse(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    importlib.import_module(module).parse_args([])
    parser = parsers[0]
    for action in parser._actions:
        assert action.help, f"{action.option_strings} has no help"
    text = " ".join(parser.format_help().split())  # unwrapped
    assert "(default: None)" not in text
    assert "--d-model D_MODEL model width (default: 256)" in text or module != module_name("model")


def test_attention_benchmark_on_cpu_shows_naive_memory_growing_quadratically_and_sdpa_not(tmp_path):
    # What holds on every CPU (with bf16 matrix units or AVX2 only), not where a cap happens to
    # bite: naive attention materialises len x len scores, so its peak grows towards 4x per
    # doubling of the length; SDPA's flash path keeps O(len) state. Measured on an AMD EPYC with
    # avx512_bf16 (forward + backward, head dim 16, one head): naive 4.3 / 9.9 / 28.4 MB at
    # 512 / 1024 / 2048, SDPA 2.6 / 4.4 / 4.3 MB. The bounds below leave a 1.5-2x margin.
    payload = run_script(
        module_name("attention"),
        tmp_path,
        *("--tag", "bench", "--impls", "naive", "sdpa_flash", "sdpa_efficient", "triton"),
        *("--head-dims", "16", "--causal", "no", "--heads", "1", "--min-len", "512"),
        *("--max-len", "2048", "--cpu-repeats", "1", "--cpu-memory-cap-mib", "512"),
    )
    check_environment(payload, "attention")
    records = payload["records"]
    assert {r["status"] for r in records} <= STATUSES
    lengths = {r["seq_len"] for r in records}
    assert lengths == {512, 1024, 2048}
    # One record per implementation, length, and measured quantity: none silently skipped.
    assert len(records) == 4 * 3 * 5

    def record(impl, seq_len, measure, pass_):
        (found,) = [
            r
            for r in records
            if (r["implementation"], r["seq_len"], r["measure"], r["pass"])
            == (impl, seq_len, measure, pass_)
        ]
        return found

    def status(impl, seq_len, measure, pass_):
        return record(impl, seq_len, measure, pass_)["status"]

    def peak(impl, seq_len):
        found = record(impl, seq_len, "memory", "forward_backward")
        assert found["status"] == "ok", found
        return found["peak_bytes"]

    naive = {n: peak("naive", n) for n in (512, 1024, 2048)}
    sdpa = {n: peak("sdpa_flash", n) for n in (512, 1024, 2048)}
    assert naive[2048] >= 2.0 * naive[1024] and naive[1024] >= 1.5 * naive[512], naive
    assert naive[2048] >= 4.0 * naive[512], naive  # quadratic: 16x in the limit
    assert sdpa[2048] <= 3.0 * sdpa[512], sdpa  # linear: 4x at most
    assert naive[2048] >= 3.0 * sdpa[2048], (naive, sdpa)
    assert {r["status"] for r in records if r["implementation"] == "triton"} == {"not_measurable"}
    assert {r["status"] for r in records if r["implementation"] == "sdpa_efficient"} == {
        "unsupported"
    }
    for r in records:
        if r["status"] == "ok" and r["measure"] == "memory":
            assert r["peak_bytes"] >= 0
        if r["status"] == "ok" and r["measure"] == "time":
            assert {"median_ms", "tflops"} <= set(r)
        if r["status"] not in ("ok",):
            assert r.get("note"), r
    assert payload["ratios"] == []  # no kernel timings on the CPU, so no ratios


@pytest.mark.parametrize("form", [pytest.param("module", marks=pytest.mark.slow), "file"])
def test_model_benchmark_on_cpu(tmp_path, form):
    # At length 1024 the naive path's scores need about 120 MiB here, SDPA's about 16.
    # Run as a file too: its CPU points run in forked children, which must find the package.
    payload = run_script(
        module_name("model"),
        tmp_path,
        *("--tag", "bench", "--lengths", "64", "1024", "--batch", "2", "--d-model", "32"),
        *("--heads", "2", "--layers", "1", "--d-ff", "64", "--vocab", "100"),
        *("--cpu-repeats", "1", "--cpu-memory-cap-mib", "48"),
        form=form,
    )
    check_environment(payload, "model")
    by_key = {(r["backend"], r["seq_len"]): r for r in payload["records"]}
    assert set(by_key) == {(b, n) for b in ("naive", "sdpa", "triton") for n in (64, 1024)}
    assert by_key["naive", 64]["status"] == "ok"
    assert by_key["sdpa", 64]["status"] == "ok"
    assert by_key["naive", 1024]["status"] == "oom"
    assert by_key["sdpa", 1024]["status"] == "ok"
    assert by_key["triton", 64]["status"] == by_key["triton", 1024]["status"] == "not_measurable"
    for n in (64, 1024):
        ok = by_key["sdpa", n]
        assert ok["peak_bytes"] >= 0 and ok["tgt_tokens_per_s"] > 0


def test_flop_convention_and_ratios():
    from benchmarks import attention_benchmark
    from benchmarks.common.measure import attention_flops

    forward = attention_flops(2, 3, 5, 7, 11, causal=False, pass_="forward")
    assert forward == 4 * 2 * 3 * 5 * 7 * 11
    assert attention_flops(2, 3, 5, 7, 11, True, "forward") == forward / 2
    assert attention_flops(2, 3, 5, 7, 11, False, "backward") == 2.5 * forward
    assert attention_flops(2, 3, 5, 7, 11, False, "forward_backward") == 3.5 * forward

    def timed(impl, tflops, status="ok"):
        return dict(
            implementation=impl,
            head_dim=64,
            causal=True,
            seq_len=1024,
            measure="time",
            status=status,
            tflops=tflops,
            **{"pass": "forward"},
        )

    records = [
        timed("triton", 300.0),
        timed("sdpa_flash", 400.0),
        timed("sdpa_cudnn", 600.0),
        timed("sdpa_math", 0.0, status="oom"),
    ]
    ratios = {r["sdpa_backend"]: r["ratio"] for r in attention_benchmark.ratios(records)}
    assert ratios == {"sdpa_flash": 0.75, "sdpa_cudnn": 0.5}


def test_compile_rows_break_even_when_the_saving_per_token_has_paid_for_the_warm_up():
    from argparse import Namespace

    from benchmarks import model_benchmark as mb

    def record(backend, compiled, tokens_per_s, warmup_s, status="ok"):
        return dict(
            backend=backend, compiled=compiled, seq_len=32, batch=8, status=status,
            tgt_tokens_per_s=tokens_per_s, warmup_s=warmup_s, peak_bytes=0,
        )  # fmt: skip

    records = [
        record("naive", False, 1000.0, 1.0),
        record("sdpa", False, 1000.0, 1.0),
        record("naive", True, 2000.0, 31.0),  # 30 s more warm-up, 0.5 ms saved per token
        record("sdpa", True, 800.0, 31.0),  # slower per step: never pays
    ]
    mb.add_breakeven(records)
    assert records[2]["breakeven_tokens"] == pytest.approx(60_000)
    assert records[3]["breakeven_tokens"] is None
    args = Namespace(backends=["naive", "sdpa"], compile=True, lengths=[32], batch=8)
    text = mb.markdown(records, args)
    assert "naive (einops) + torch.compile tokens/s" in text
    assert "60,000" in text and "never" in text


def test_varlen_benchmark_on_cpu_counts_packed_tokens_where_padding_counts_the_longest(tmp_path):
    """Bytes per token: q, k, v, dout, out, dq, dk, dv, and three float32 rows per head (lse,
    delta, dlse); padded, every sequence as long as the longest, plus its key mask."""
    command, cwd = invocation(module_name("varlen"), "module")
    args = ["--device", "cpu", "--out-dir", str(tmp_path), "--max-len", "256", "--batch", "4"]
    args += ["--heads", "2", "--head-dim", "16", "--dtype", "float16", "--causal"]
    done = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((tmp_path / "varlen_memory.json").read_text())
    check_environment(payload, "varlen")
    assert (tmp_path / "varlen_memory.png").stat().st_size > 0
    records = payload["records"]
    assert [r["max_len"] for r in records] == [128, 256]
    per_token = 8 * 2 * 16 * 2 + 3 * 2 * 4
    for r in records:
        assert r["total_tokens"] < r["padded_tokens"] == 4 * r["max_len"]
        # beyond the rows: the cumulative lengths (20 bytes) and 1-4 byte stand-ins for the
        # arguments a call does not use (no mask, no mask gradient, no ALiBi or sinks)
        packed_rows, padded_rows = r["total_tokens"] * per_token, r["padded_tokens"] * per_token
        assert 0 <= r["packed_bytes"] - packed_rows <= 64
        assert 0 <= r["padded_bytes"] - padded_rows - r["padded_tokens"] <= 64  # + the key mask
