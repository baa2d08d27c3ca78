"""The top-level ``kernels`` package is this project's wherever Python starts.

``kernels`` is also the import name of Hugging Face's ``kernels`` distribution, which
transformers 5.25 and later require: installed beside this project it sits in site-packages,
ahead of an editable install, and shadows our kernels everywhere but the repository root. The
extras keep transformers below 5.25 (pyproject.toml); the model library refuses a stand-in
with the way out (transformer/kernel_package.py).
"""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, cwd: Path, pythonpath: str | None = None):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_kernels_is_this_projects_package_when_python_starts_outside_the_repository(tmp_path):
    done = run_python("import kernels; print(kernels.__file__)", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    found = Path(done.stdout.strip()).resolve()
    assert found == ROOT / "kernels" / "__init__.py", (
        f"`import kernels` outside the repository found {found}: another distribution installs "
        "a top-level `kernels` package (Hugging Face's, from transformers>=5.25?)"
    )


def test_no_other_installed_distribution_provides_a_kernels_package():
    providers = importlib.metadata.packages_distributions().get("kernels", [])
    assert set(providers) <= {"flash-transformer"}, providers


def test_a_shadowing_kernels_package_is_refused_naming_it_and_the_way_out(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text('"""Somebody else\'s kernels."""\n')
    code = (
        "import torch\n"
        "from transformer.attention import attend\n"
        "q = torch.randn(1, 2, 3, 16)\n"
        "attend(q, q, q, backend='triton')\n"
    )
    done = run_python(code, cwd=tmp_path, pythonpath=str(tmp_path))
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:"), done.stderr
    assert str(tmp_path / "kernels") in last_line
    assert "pip uninstall kernels" in last_line and "transformers<5.25" in last_line
