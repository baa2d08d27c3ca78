"""Without CUDA, ``python -m pytest`` rehearses a CUDA host's run (tests/cuda_host_rehearsal.py)
and fails each way a test set up on a CPU fails there: a kernel reached without the
``kernel_device`` fixture (by the function, the operator, the model's backend or the Hugging
Face backend), a launch count assumed to be one, autotuning in a test that did not ask for it,
a ``cuda`` test without the fixture, a kernel launched at import. Each is broken once in a
small test run (pytest's ``pytester``, in a subprocess with this directory's conftest), which
fails it, test by test, and passes the tests that keep the rules; a test marked
``interpreter_only`` runs with the device and launch-count rules off. On a CUDA host (faked)
the rehearsal is not there and ``interpreter_only`` tests skip.
"""

from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
# The rehearsal is the CPU's stand-in for a CUDA host's run; on a CUDA host the run is the real one.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="rehearses a CUDA host on a CPU")

RULE_BREAKERS = """
import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction

from kernels import flash_attention
from kernels.integrations import huggingface
from transformer.attention import attend

def qkv(device):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, 5, 16, generator=gen).to(device) for _ in range(3)]


def test_function_on_the_cpu():
    flash_attention(*qkv("cpu"))


def test_operator_on_the_cpu():
    torch.ops.flash_transformer.flash_attention(*qkv("cpu"), None, False, 0.25)


def test_model_backend_on_the_cpu():
    attend(*qkv("cpu"), backend="triton")


def test_hugging_face_backend_on_the_cpu():
    huggingface.attention_forward(torch.nn.Module(), *qkv("cpu"), None, is_causal=False)


def recorded_launches(monkeypatch):  # the names of the kernels launched, one a launch
    launched, real = [], InterpretedFunction.run

    def run(kernel, *args, **kwargs):
        launched.append(kernel.__name__)
        return real(kernel, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    return launched


def test_one_launch_per_call(kernel_device, monkeypatch):
    launched = recorded_launches(monkeypatch)
    flash_attention(*qkv(kernel_device))
    assert len(launched) == 1


def test_tuning_without_asking(kernel_device, monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    flash_attention(*qkv(kernel_device))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_only_without_the_fixture():
    flash_attention(*qkv("cuda"))


def test_on_the_fixtures_device(kernel_device):
    attend(*qkv(kernel_device), backend="triton")


def test_every_launch_counted(kernel_device, monkeypatch):
    launched = recorded_launches(monkeypatch)
    flash_attention(*qkv(kernel_device))
    assert launched and set(launched) == {"_attn_fwd"}


@pytest.mark.autotune
def test_tuning_when_asked(kernel_device):
    flash_attention(*qkv(kernel_device))


@pytest.mark.interpreter_only
def test_interpreter_only_on_the_cpu_one_launch_per_call(monkeypatch):
    launched = recorded_launches(monkeypatch)
    flash_attention(*qkv("cpu"))
    assert launched == ["_attn_fwd"]


@pytest.mark.interpreter_only
def test_interpreter_only_tuning_without_asking(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    flash_attention(*qkv("cpu"))
"""

BROKEN = {
    "test_function_on_the_cpu": "without the kernel_device fixture",
    "test_operator_on_the_cpu": "without the kernel_device fixture",
    "test_model_backend_on_the_cpu": "without the kernel_device fixture",
    "test_hugging_face_backend_on_the_cpu": "without the kernel_device fixture",
    "test_one_launch_per_call": "assert 2 == 1",
    "test_tuning_without_asking": "would autotune",
    "test_cuda_only_without_the_fixture": "marked cuda",  # skipped without the rehearsal
    "test_interpreter_only_tuning_without_asking": "would autotune",
}
KEPT = [
    "test_on_the_fixtures_device",
    "test_every_launch_counted",
    "test_tuning_when_asked",
    "test_interpreter_only_on_the_cpu_one_launch_per_call",
]


def with_this_conftest(pytester):
    """pytester's directory with tests/conftest.py and the helpers it imports."""
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    for helper in ("cuda_host_rehearsal", "devices"):
        pytester.makepyfile(**{helper: (TESTS / f"{helper}.py").read_text()})
    return pytester


AT_IMPORT = """
import torch
from kernels import flash_attention

flash_attention(*(torch.randn(1, 1, 3, 16) for _ in range(3)))
"""


@pytest.fixture
def rule_breakers(pytester):
    """A directory with this conftest, the test file above and a module that launches a kernel
    when it is imported."""
    with_this_conftest(pytester).makepyfile(
        test_rule_breakers=RULE_BREAKERS, test_at_import=AT_IMPORT
    )
    return pytester


def outcomes(result) -> dict[str, str]:
    """Test name -> PASSED / FAILED (a failed call or set-up), from the -rA summary."""
    found = {}
    for line in result.outlines:
        for outcome, said in (("PASSED", "PASSED"), ("FAILED", "FAILED"), ("ERROR", "FAILED")):
            if line.startswith(f"{outcome} test_rule_breakers.py::"):
                found[line.split("::")[1].split()[0]] = said
    return found


def test_the_default_run_fails_each_broken_rule_and_only_those(rule_breakers, monkeypatch):
    # Autotuning on in the caller's environment: the conftest turns it off all the same.
    monkeypatch.setenv("FLASH_ATTENTION_AUTOTUNE", "1")
    result = rule_breakers.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    got = outcomes(result)
    text = result.stdout.str()
    assert got == {**dict.fromkeys(BROKEN, "FAILED"), **dict.fromkeys(KEPT, "PASSED")}, text
    for name, message in BROKEN.items():
        section = text.split(f" {name} _", 1)[1].split("\n___", 1)[0]  # from its header on
        assert message in section, (name, section)
    assert "launched outside any test" in text and result.ret == pytest.ExitCode.TESTS_FAILED


ON_A_CUDA_HOST = """
import pytest


def test_nothing_is_rehearsed(request):
    assert request.config.pluginmanager.get_plugin("cuda_host_rehearsal") is None


@pytest.mark.interpreter_only
def test_patches_the_interpreter():
    pass
"""


def test_on_a_cuda_host_the_run_is_the_real_one(pytester):
    """torch.cuda.is_available() answers True (a plugin loaded before the conftest says so):
    no rehearsal, and the interpreter_only test skips."""
    with_this_conftest(pytester).makepyfile(
        fake_cuda="import torch\n\ntorch.cuda.is_available = lambda: True\n",
        test_on_a_cuda_host=ON_A_CUDA_HOST,
    )
    result = pytester.runpytest_subprocess("-p", "fake_cuda", "-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*which a CUDA host does not run*"])
