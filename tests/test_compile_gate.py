"""The kernels compile for every GPU we claim, checked on a machine without one.

Every test run compiles one bf16 call of each kernel for sm_90 (a handful of builds, well under
a minute); the CI subset of ``python -m kernels.compile_gate`` (every architecture, a few
minutes on two cores) runs under the ``slow`` marker, the full sweep under ``compile_full``::

    python -m pytest -m slow tests/test_compile_gate.py
    python -m pytest -m compile_full tests/test_compile_gate.py

The gate itself is tested here too: it must go red on a kernel that only the interpreter
accepts, and its verdicts (spills, shared memory, wgmma) must follow from what it measured.
"""

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kernels import compile_gate
from kernels.common import tuning
from kernels.compile_gate import Build, cli

ROOT = Path(__file__).resolve().parents[1]


def compiled_python(code_or_args, tmp_path, timeout):
    """Run python with Triton compiling (TRITON_INTERPRET unset), in a fresh Triton cache."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return subprocess.run(
        [sys.executable, *code_or_args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


ONE_CALL_OF_EACH_KERNEL_FOR_SM90 = """
import json, sys
from dataclasses import asdict
from kernels import compile_gate
from kernels.compile_gate import Case

cases = [Case(kernel, "bfloat16", 64, "causal+key_mask")
         for kernel in ("flash_attention", "additive_attention")]
builds = compile_gate.run([], cases, [], [90], jobs=2, progress=False)
print(json.dumps({"builds": [asdict(b) for b in builds],
                  "failures": compile_gate.failures(builds)}, default=str))
"""


def test_one_bf16_call_of_each_kernel_compiles_for_sm90_with_wgmma_and_without_spills(tmp_path):
    done = compiled_python(["-c", ONE_CALL_OF_EACH_KERNEL_FOR_SM90], tmp_path, 600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    builds = report["builds"]
    assert report["failures"] == [], report["failures"]
    assert {b["arch"] for b in builds} == {90}
    kernels = {b["kernel"] for b in builds}
    assert {"_attn_fwd", "attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"} <= kernels
    assert len(kernels) > 4, kernels  # the additive kernels compiled too
    assert all(b["ok"] for b in builds), [b["error"] for b in builds if not b["ok"]]
    wgmma_builds = [b for b in builds if b["kernel"] in compile_gate.WGMMA_KERNELS]
    assert wgmma_builds and all(b["wgmma"] > 0 for b in wgmma_builds)


@pytest.mark.slow
def test_every_launch_compiles_for_sm80_86_89_90_within_shared_memory_and_without_spills(
    tmp_path,
):
    report = tmp_path / "gate.json"
    done = compiled_python(["-m", "kernels.compile_gate", "--json", str(report)], tmp_path, 1200)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    builds = json.loads(report.read_text())
    assert {b["arch"] for b in builds} == {80, 86, 89, 90}
    kernels = {b["kernel"] for b in builds}
    assert {"_attn_fwd", "attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq"} <= kernels
    assert {"_additive_fwd", "_additive_bwd_dkdv", "_additive_bwd_dq"} <= kernels
    assert "_keep_mask_kernel" in kernels  # dropout's keep-mask, which the tests read
    for arch in (80, 86, 89, 90):  # each kernel, flash and additive, on each architecture
        assert {b["kernel"] for b in builds if b["arch"] == arch} == kernels, arch
    hopper_16bit_dots = [
        b
        for b in builds
        if b["arch"] == 90
        and b["kernel"] in compile_gate.WGMMA_KERNELS
        and b["signature"]["Q"] in ("*fp16", "*bf16")
    ]
    assert hopper_16bit_dots and all(b["wgmma"] > 0 for b in hopper_16bit_dots)


@pytest.mark.compile_full
def test_full_sweep_of_dtypes_head_dims_maskings_and_configs_compiles(tmp_path):
    done = compiled_python(["-m", "kernels.compile_gate", "--full"], tmp_path, 6 * 3600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]


BROKEN_KERNEL = """
import torch
import triton
import triton.language as tl

from kernels.common.runtime import launch

SCALE = 2.0  # a plain global: the interpreter reads it, the compiler refuses it


@triton.jit
def _scale(X, N, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(X + offs, tl.load(X + offs, mask=offs < N) * SCALE, mask=offs < N)


def scale(x):
    launch(_scale, (1,), x, x.numel(), BLOCK=64, num_warps=4, num_stages=1)
"""


@pytest.mark.slow
def test_gate_goes_red_on_a_kernel_that_reads_a_plain_global(tmp_path):
    (tmp_path / "broken_kernel.py").write_text(BROKEN_KERNEL)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import torch
        from kernels import compile_gate
        import broken_kernel

        compile_gate.WORKLOADS["broken"] = lambda case: broken_kernel.scale(
            torch.empty(50, device="meta")
        )
        case = compile_gate.Case("broken", "float32", 64, "none")
        builds = [compile_gate.compile_build(b) for b in compile_gate.plan([case], [80], False)]
        found = compile_gate.failures(builds)
        assert len(builds) == 1 and not builds[0].ok, builds
        assert "global" in builds[0].error.lower(), builds[0].error
        assert found and "does not compile" in found[0], found
        """
    )
    done = compiled_python(["-c", script], tmp_path, 300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


# ----------------------------------------------------------------- the gate's verdicts


def build(arch=90, kernel="_attn_fwd", q="*bf16", shared=1000, local=0, wgmma=4, case="c"):
    return Build(
        arch=arch, kernel=kernel, module="m", signature={"Q": q}, constexprs={}, attrs={},
        options={}, cases=[case], ok=True, shared_bytes=shared, registers=128,
        local_bytes=local, wgmma=wgmma,
    )  # fmt: skip


def test_a_call_fails_only_when_every_config_the_launcher_may_pick_spills():
    one_spills = [build(local=64), build(local=0)]
    assert compile_gate.failures(one_spills) == []
    all_spill = [build(local=64), build(local=8)]
    assert any("every config spills" in f for f in compile_gate.failures(all_spill))


def test_shared_memory_over_the_architecture_limit_fails_per_architecture():
    size = tuning.shared_memory_limit(86) + 1  # fits an A100 and an H100, not an RTX 30xx
    assert compile_gate.failures([build(arch=80, shared=size)]) == []
    assert any("shared memory" in f for f in compile_gate.failures([build(arch=86, shared=size)]))


def test_hopper_16_bit_products_must_be_wgmma():
    assert any("wgmma" in f for f in compile_gate.failures([build(arch=90, wgmma=0)]))
    assert compile_gate.failures([build(arch=90, q="*fp32", wgmma=0)]) == []
    assert compile_gate.failures([build(arch=80, wgmma=0)]) == []


def test_a_build_that_does_not_compile_fails():
    broken = build()
    broken.ok, broken.error = False, "CompilationError: boom"
    assert any("does not compile" in f for f in compile_gate.failures([broken]))


def test_the_summary_table_counts_per_kernel_and_explains_every_column():
    from kernels.compile_gate.verdicts import summary

    table = summary([build(arch=90, local=64, wgmma=3), build(arch=90, shared=200_000, wgmma=0)])
    header, row, *legend = table.splitlines()
    columns = header.replace("max smem", "max_smem").replace("max regs", "max_regs").split()
    assert row.split()[2:] == ["2", "200000", str(tuning.shared_memory_limit(90)), "128"] + [
        "1",
        "1",
        "1",
    ]  # builds, max smem, limit, max regs, spills, wgmma, failed (the second is over the limit)
    explained = " ".join(legend)
    for column in columns[3:]:  # arch, kernel and builds need no words
        assert f"{column.replace('_', ' ')}:" in explained, column


def test_the_ci_subset_compiles_both_kernels_in_every_dtype():
    every, first = compile_gate.ci_cases()
    cases = every + first
    assert {c.workload for c in cases} == set(compile_gate.WORKLOADS)
    for workload in compile_gate.WORKLOADS:
        assert {c.dtype for c in cases if c.workload == workload} == set(compile_gate.DTYPES)
        assert any(c.head_dim == 128 for c in cases if c.workload == workload)


def test_the_ci_subset_compiles_each_score_option_and_the_capture_passes_it_on():
    from kernels.compile_gate.capture import _flash_options

    every, first = compile_gate.ci_cases()
    flash = [c for c in every + first if c.workload == "flash_attention"]
    for option in ("window", "bottom_right", "softcap", "alibi", "sinks"):
        cases = [c for c in flash if option in c.masking]
        assert cases, option
        options = _flash_options(cases[0])
        assert {
            "window": options.window != (-1, -1),
            "bottom_right": options.bottom_right,
            "softcap": options.softcap > 0,
            "alibi": options.alibi_slopes is not None,
            "sinks": options.sinks is not None,
        }[option], (option, options)


def test_the_ci_subset_compiles_packed_sequences_in_every_pass():
    """Each varlen case's captured launches (meta tensors, nothing runs) take VARLEN in the
    forward and both backward passes, with the longest sequence's blocks on grid axis 1; the
    packed cases hold every score option and dropout, the sinks reaching the forward."""
    from kernels.common import warm
    from kernels.compile_gate.capture import WORKLOADS

    _, first = compile_gate.ci_cases()
    cases = [c for c in first if "varlen" in c.masking]
    options = ("window", "softcap", "alibi", "sinks", "dropout")
    assert all(any(option in c.masking for c in cases) for option in options)
    for case in cases:
        with warm.recording("first", arch=90) as launches:
            WORKLOADS[case.workload](case)
        packed = {launch.kernel.__name__ for launch in launches if launch.meta.get("VARLEN")}
        assert packed == {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"}, case.label()
        fwd = next(launch for launch in launches if launch.kernel.__name__ == "_attn_fwd")
        assert fwd.meta["HAS_SINKS"] == ("sinks" in case.masking), case.label()
        assert fwd.grid[0] == case.batch * case.heads
        assert (
            fwd.grid[1] * fwd.meta["BLOCK_M"]
            >= case.len_q
            > (fwd.grid[1] - 1) * fwd.meta["BLOCK_M"]
        )


def test_float32_spilling_in_every_config_warns_and_does_not_fail():
    spilling = [build(q="*fp32", local=64, wgmma=0), build(q="*fp32", local=8, wgmma=0)]
    assert compile_gate.failures(spilling) == []
    (warning,) = compile_gate.warnings(spilling)
    assert "float32 spills in every config (least 8 B)" in warning
    assert compile_gate.warnings([build(local=64), build(local=8)]) == []  # 16-bit: a failure


def test_only_the_documented_16_bit_spill_warns_instead_of_failing():
    """The dQ pass of a float bias's gradient with dropout at head dims > 128 on sm_90 spills in
    every config (measured; kernels/flash_attention/configs.py): a warning. The same call at
    d = 128, on sm_80, or without dropout still fails the gate."""

    def dq(arch=90, width=256, dropout=True, local=32):
        b = build(arch=arch, kernel="_attn_bwd_dq", local=local)
        b.constexprs = dict(MASK_GRAD=True, HAS_DROPOUT=dropout, BLOCK_DQK=width, BLOCK_DV=64)
        return b

    known = [dq(), dq(local=120)]
    assert compile_gate.failures(known) == []
    (warning,) = compile_gate.warnings(known)
    assert "sm_90 _attn_bwd_dq: spills (known:" in warning and "(least 32 B)" in warning
    for other in (dq(width=128), dq(arch=80), dq(dropout=False)):
        assert any("every config spills" in f for f in compile_gate.failures([other])), other
        assert compile_gate.warnings([other]) == []


@pytest.mark.parametrize(
    "builds,status",
    [
        ([build(), build(q="*fp32", local=64, wgmma=0)], 0),  # a float32 spill only warns
        ([build(arch=86, shared=tuning.shared_memory_limit(86) + 1)], 1),
        ([build(local=64)], 1),
    ],
    ids=["clean", "shared-memory", "spills"],
)
def test_main_exits_0_on_a_clean_gate_and_1_on_any_failure(
    builds, status, tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))  # main() sets it: restored
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    asked = []
    monkeypatch.setattr(cli, "run", lambda *args: asked.append(args) or builds)
    report = tmp_path / "gate.json"
    assert compile_gate.main(["--arch", "80", "86", "--jobs", "1", "--json", str(report)]) == status
    assert asked[0][2] == [80, 86] and asked[0][4] == 1  # archs compiled every config, jobs
    assert len(json.loads(report.read_text())) == len(builds)
    out = capsys.readouterr().out
    assert ("FAIL " in out) == bool(status)


@pytest.mark.parametrize(
    "flags,every_config",
    [(["--full"], True), (["--full", "--first-choice"], False)],
    ids=["full", "full-first-choice"],
)
def test_full_sweep_compiles_every_case_with_every_config_or_the_launchers_choice(
    flags, every_config, tmp_path, monkeypatch
):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(cli, "run", lambda *args: asked.append(args) or [build()])
    assert compile_gate.main([*flags, "--arch", "90"]) == 0
    cases_every, cases_first, archs_every, archs_first, _ = asked[0]
    full = compile_gate.full_cases()
    assert (cases_every, cases_first) == ((full, []) if every_config else ([], full))
    assert (archs_every, archs_first) == (([90], []) if every_config else ([], [90]))


def test_the_full_sweep_holds_every_score_option_at_every_head_dim_in_both_16_bit_dtypes():
    full = {(c.dtype, c.head_dim, c.v_dim, c.masking) for c in compile_gate.full_cases()}
    dims = [(d, d) for d in compile_gate.HEAD_DIMS] + list(compile_gate.VALUE_HEAD_DIMS)
    for option in ("window", "softcap", "sinks", "alibi", "bottom_right"):
        maskings = [m for m in compile_gate.SCORE_OPTION_MASKINGS if option in m.split("+")]
        assert maskings, option
        for dtype, (d, d_v), masking in itertools.product(("float16", "bfloat16"), dims, maskings):
            assert (dtype, d, d_v, masking) in full


def test_first_choice_without_full_is_refused(monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(cli, "run", lambda *args: pytest.fail("compiled anyway"))
    with pytest.raises(SystemExit) as exit_info:
        compile_gate.main(["--first-choice"])
    assert exit_info.value.code == 2
    assert "--first-choice goes with --full" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--arch", "8"], "--arch [8]: the gate builds for [80, 86, 89, 90] only"),
        (["--arch", "80", "200"], "--arch [200]"),
        (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_an_unknown_arch_or_no_jobs_is_refused_before_compiling(monkeypatch, capsys, argv, message):
    """Before, --arch 8 reached the compiler: eleven LLVM errors and a BrokenProcessPool."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(cli, "run", lambda *args: pytest.fail("compiled anyway"))
    with pytest.raises(SystemExit) as exit_info:
        compile_gate.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_main_refuses_to_run_under_the_interpreter(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cli, "run", lambda *args: pytest.fail("compiled anyway"))
    with pytest.raises(SystemExit) as exit_info:
        compile_gate.main([])
    assert exit_info.value.code == 2
    assert "unset TRITON_INTERPRET" in capsys.readouterr().err


@pytest.mark.slow
def test_shared_memory_estimate_is_not_below_what_the_compiler_allocates(tmp_path):
    """The launcher prunes with TileShape.shared_memory before compiling; if it underestimated,
    a config that cannot launch would be kept. Three builds, the widest tiles of each flash
    kernel in bfloat16 at d = 128 on sm_90, compiled here (about 10 s each on 2 cores)."""
    script = textwrap.dedent(
        """
        import importlib, json
        from kernels import compile_gate
        from kernels.common.tuning import LaunchConfig
        fa = importlib.import_module("kernels.flash_attention.configs")
        case = compile_gate.Case("flash_attention", "bfloat16", 128, "causal+key_mask")
        widest = {}
        for b in compile_gate.plan([case], [90], True):
            if b.kernel in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq"):
                area = b.constexprs["BLOCK_M"] * b.constexprs["BLOCK_N"]
                if area > widest.get(b.kernel, (0, None))[0]:
                    widest[b.kernel] = (area, b)
        rows = []
        for kernel, (_, b) in sorted(widest.items()):
            compile_gate.compile_build(b)
            c, o = b.constexprs, b.options
            config = LaunchConfig(c["BLOCK_M"], c["BLOCK_N"], o["num_warps"], o["num_stages"])
            name = {"_attn_fwd": "fwd", "_attn_bwd_dkdv": "dkdv", "_attn_bwd_dq": "dq"}[kernel]
            block_d = max(c["BLOCK_DQK"], c["BLOCK_DV"])
            estimate = fa.TILES[name].shared_memory(config, block_d, 2)
            rows.append([kernel, b.config(), b.ok, b.error[:300], b.shared_bytes, estimate])
        print(json.dumps(rows))
        """
    )
    done = compiled_python(["-c", script], tmp_path, 600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 3
    for kernel, config, ok, error, measured, estimate in rows:
        assert ok, (kernel, config, error)
        assert 0 < measured <= estimate, f"{kernel} {config}: ptxas {measured} B > {estimate} B"


def test_only_keeps_the_cases_whose_label_contains_the_text(tmp_path, monkeypatch, capsys):
    """--only: a quick check of a few cases (and a clear error when it matches none)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(cli, "run", lambda *args: asked.append(args) or [build()])
    assert compile_gate.main(["--arch", "90", "--only", "additive_attention float16 d=16"]) == 0
    cases_every, cases_first = asked[0][:2]
    assert cases_every == [] and [c.label() for c in cases_first] == [
        "additive_attention float16 d=16 none (200x333)"
    ]
    with pytest.raises(SystemExit) as exit_info:
        compile_gate.main(["--only", "no such case"])
    assert exit_info.value.code == 2 and "no case's label" in capsys.readouterr().err
