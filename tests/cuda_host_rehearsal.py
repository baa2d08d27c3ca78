"""The test run a CUDA host would do, rehearsed on a CPU: part of every ``python -m pytest``
without CUDA (tests/conftest.py registers this plugin; on a CUDA host the run is the real one).

On a machine with a GPU, ``python -m pytest`` runs the kernels compiled, not under Triton's
interpreter, and three things that pass on a CPU fail or flake there for reasons of test
set-up, not of the kernels. This plugin makes each of them fail on the CPU too, in the test
that does it:

* **a kernel reached without the ``kernel_device`` fixture.** On a GPU host the interpreter is
  off and a kernel refuses CPU tensors, so a test that builds its tensors anywhere but on the
  fixture's device fails there. Every Triton kernel launch, whatever the route into it (the
  public functions, the ``torch.ops`` operators, the model's ``triton`` backend, the Hugging
  Face backend, the attention maps, the README example), is checked here: the test that
  launches must have requested ``kernel_device`` (itself or through its fixtures).
* **launch counts.** On a GPU the first launch for a tuning key may launch candidate
  configurations before the call's own launch (``kernels.common.tuning.pick`` compiles, checks and
  times them). Here the first ``pick`` of each key in each test launches the first candidate
  once more before the call's own launch, so a test that counts launches must count what it
  means, not assume one. A test marked ``pick_launch_count`` (it counts the tuner's own
  launches, with a fake launch) gets no extra launch.
* **autotuning inside tests.** conftest turns ``FLASH_ATTENTION_AUTOTUNE`` off for the whole
  run (timing candidates buys a test nothing and makes a run slow and its choices differ from
  run to run); a test that wants tuning says so with ``@pytest.mark.autotune``. A kernel
  launch that would tune, in a test without the marker, fails the test.

A problem found while a test runs fails that test's report (its setup, call or teardown)
with a message naming the rule; one found outside any test (at import or collection) fails
the session. A test marked ``cuda``, which skips here and so launches nothing that could be
seen, fails unless it requests ``kernel_device``. Only real kernel launches count: a test that
replaces the launch or calls ``launch.pick`` with its own callables launches nothing.

A test marked ``interpreter_only`` patches or inspects Triton's interpreter: a CUDA host skips
it, and here it runs with the first two rules off (its CPU tensors and its launch counts are
the interpreter's by design); the autotuning rule still holds.
"""

from __future__ import annotations

import pytest

KERNEL_DEVICE = "kernel_device"
AUTOTUNE_MARK = "autotune"
CUDA_MARK = "cuda"
PICK_COUNT_MARK = "pick_launch_count"
INTERPRETER_ONLY_MARK = "interpreter_only"
SAYS = "rehearsing a CUDA host"  # the prefix of its messages


def tuning_module():
    """The module of the kernels' ``pick(key, configs, launch)`` and ``autotune_enabled()``."""
    import importlib

    return importlib.import_module("kernels.common.tuning")


def choosing_as_on_a_gpu(tuning) -> bool:
    """False while a launch hook that fixes which configurations run is installed (the compile
    gate's or the warm-up's, where there is such a hook): those launch alike everywhere."""
    runtime = getattr(tuning, "runtime", None)
    hook = runtime.active_hook() if hasattr(runtime, "active_hook") else None
    return getattr(hook, "configs", "pick") == "pick"


class CudaHostRehearsal:
    """The plugin object: patches Triton's interpreter and the kernels' ``pick`` for the
    session and turns what they see into failed reports."""

    def __init__(self) -> None:
        self.item: pytest.Item | None = None
        self.problems: list[str] = []
        self.outside_tests: list[str] = []
        self.picked: set = set()  # tuning keys the current test has launched
        self.checks_device = False  # the current test launches on its own device: say it once
        self.adds_candidates = True  # a candidate launch before each key's first
        self.patches = pytest.MonkeyPatch()

    # --- what the patched functions report ------------------------------------------------

    def kernel_launched(self, kernel_name: str) -> None:
        if self.item is None:
            self.outside_tests.append(
                f"Triton kernel {kernel_name} launched outside any test (at import or "
                "collection): on a CUDA host its tensors would be on the wrong device"
            )
        elif self.checks_device:
            self.checks_device = False  # the first kernel says it; the rest add nothing
            self.problem(
                f"launched the Triton kernel {kernel_name} without the {KERNEL_DEVICE} fixture: "
                "on a CUDA host the interpreter is off and the kernel refuses CPU tensors; take "
                f"the device from {KERNEL_DEVICE} (tests/conftest.py)"
            )

    def tuning_key_picked(self, tuning, key, configs, launch_one) -> None:
        marked = self.item is not None and self.item.get_closest_marker(AUTOTUNE_MARK)
        if tuning.autotune_enabled() and not marked:
            self.problem(
                "a kernel launch would autotune (FLASH_ATTENTION_AUTOTUNE is on): tests/"
                "conftest.py turns it off for the run; a test that means to tune is marked "
                f"@pytest.mark.{AUTOTUNE_MARK}"
            )
        if self.adds_candidates and key not in self.picked and choosing_as_on_a_gpu(tuning):
            self.picked.add(key)
            launch_one(configs[0])  # as a GPU's pick may: a candidate before the call's own

    def problem(self, message: str) -> None:
        if message not in self.problems:
            self.problems.append(message)

    # --- the patches --------------------------------------------------------------------

    def install(self) -> None:
        from triton.runtime.interpreter import InterpretedFunction

        tuning = tuning_module()
        rehearsal = self
        interpreted_run, real_pick = InterpretedFunction.run, tuning.pick

        def run(kernel, *args, **kwargs):
            rehearsal.kernel_launched(kernel.__name__)
            return interpreted_run(kernel, *args, **kwargs)

        def pick(key, configs, launch_one, *args, **kwargs):
            # A kernel's own launcher (defined in the kernels package), not a test's stand-in.
            if (getattr(launch_one, "__module__", None) or "").startswith("kernels."):
                rehearsal.tuning_key_picked(tuning, key, configs, launch_one)
            return real_pick(key, configs, launch_one, *args, **kwargs)

        self.patches.setattr(InterpretedFunction, "run", run)
        self.patches.setattr(tuning, "pick", pick)

    # --- pytest hooks ---------------------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.install()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.patches.undo()
        if self.outside_tests:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        for message in self.outside_tests:
            terminalreporter.write_line(f"{SAYS}: {message}", red=True)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem):
        self.item, self.problems, self.picked = item, [], set()
        interpreter_only = item.get_closest_marker(INTERPRETER_ONLY_MARK) is not None
        self.checks_device = KERNEL_DEVICE not in item.fixturenames and not interpreter_only
        self.adds_candidates = not (interpreter_only or item.get_closest_marker(PICK_COUNT_MARK))
        if item.get_closest_marker(CUDA_MARK) and KERNEL_DEVICE not in item.fixturenames:
            # Skipped here, so nothing it launches is seen: it must say where it runs.
            self.problem(
                f"marked {CUDA_MARK} (it runs only on a CUDA host, never here) without the "
                f"{KERNEL_DEVICE} fixture: take the device from {KERNEL_DEVICE}"
            )
        yield
        self.item, self.checks_device, self.adds_candidates = None, False, True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = (yield).get_result()
        if self.problems and report.when == call.when:
            found, self.problems = self.problems, []
            if report.passed or report.skipped:
                report.outcome = "failed"
                report.longrepr = "\n".join(f"{SAYS}: {m}" for m in found)
            else:
                report.sections.append((SAYS, "\n".join(found)))
