"""Every test that runs our kernels takes its device from the ``kernel_device`` fixture
(tests/conftest.py): CUDA when present, else the CPU under Triton's interpreter. On a GPU
machine the kernels refuse CPU tensors (no interpreter there), so a test that builds its tensors
on the CPU and runs backend="triton" would fail there and pass here."""

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# A test reaches our kernels through the model with backend="triton" (the string "triton"
# anywhere) or through the attention maps with method="flash".
# Files that name "triton" as a benchmark's label, not a backend they launch.
NOT_KERNEL_TESTS = {"test_benchmarks.py", "test_gpu_report.py", "test_kernel_device.py"}


def kernel_tests_without_fixture(source: str) -> list[str]:
    """Test functions that reach a kernel marker, in their body, decorators or any module-level
    helper or constant they name (followed through), without a ``kernel_device`` argument."""
    module = ast.parse(source).body
    definitions = {}
    for node in module:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign):
            definitions.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))

    def reaches_a_kernel(node, seen):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Constant) and sub.value == "triton":
                return True
            if isinstance(sub, ast.keyword) and sub.arg == "method":
                if isinstance(sub.value, ast.Constant) and sub.value.value == "flash":
                    return True
            if isinstance(sub, ast.Name) and sub.id in definitions and sub.id not in seen:
                seen.add(sub.id)
                if reaches_a_kernel(definitions[sub.id], seen):
                    return True
        return False

    return [
        node.name
        for node in module
        if isinstance(node, ast.FunctionDef)
        and node.name.startswith("test")
        and reaches_a_kernel(node, {node.name})
        and "kernel_device" not in [a.arg for a in node.args.args]
    ]


def test_the_device_check_finds_a_triton_test_without_the_fixture():
    source = """
BACKENDS = ("naive", "triton")
def model(backend):
    return backend
@parametrize("backend", BACKENDS)
def test_parametrized(backend):
    pass
def test_through_a_helper():
    model("triton")
def test_flash_maps():
    layer_weights(method="flash")
def test_with_the_fixture(kernel_device):
    model("triton")
def test_unrelated():
    model("naive")
"""
    assert kernel_tests_without_fixture(source) == [
        "test_parametrized",
        "test_through_a_helper",
        "test_flash_maps",
    ]


def test_every_test_that_runs_a_kernel_takes_the_kernel_device_fixture():
    """On a GPU machine the kernels refuse CPU tensors (no interpreter there): a test that builds
    its tensors on the CPU and runs backend="triton" would fail there, not here."""
    missing = {
        path.name: names
        for path in sorted(TESTS.glob("test_*.py"))
        if path.name not in NOT_KERNEL_TESTS
        and (names := kernel_tests_without_fixture(path.read_text()))
    }
    assert not missing, f"tests that run a kernel without the kernel_device fixture: {missing}"
