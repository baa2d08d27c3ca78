"""The README and the pages under docs/ point at files and headings that exist, and the project
speaks to its readers, not to its tracker: no internal issue numbers in tracked files."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# [text](target) and <img src="target">; targets with a scheme (https:, mailto:) are not files.
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
CODE_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+\s+(.*?)\s*$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    text = CODE_BLOCK.sub("", page.read_text(encoding="utf-8"))
    found = [a or b for a, b in LINK.findall(text)]
    return [link for link in found if not SCHEME.match(link)]


def test_there_are_pages_and_links_to_check():
    assert len(PAGES) > 1
    assert sum(len(relative_links(page)) for page in PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_and_heading(page):
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.relative_to(ROOT)}: " + ", ".join(broken)


def test_no_tracked_file_mentions_an_internal_issue_number():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    pattern = re.compile(rb"issue ?[0-9]", re.IGNORECASE)
    found = []
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.is_file() and pattern.search(path.read_bytes()):
            found.append(name.decode())
    assert not found, f"internal issue numbers in: {found}"


def test_the_readme_kernel_example_runs_and_agrees_with_sdpa(capsys, kernel_device):
    """The README's "Using the kernel" example, run as written with torch's default device set
    to the kernel_device fixture's (the README's "put the tensors on cuda": on a GPU the kernel
    refuses CPU tensors; without one the CPU, under Triton's interpreter: tests/conftest.py sets
    TRITON_INTERPRET=1)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Using the kernel", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "from kernels import flash_attention" in example
    with torch.device(kernel_device):  # the tensors it makes are made there
        exec(compile(example, "README.md example", "exec"), {})
    printed = capsys.readouterr().out
    assert float(re.search(r"tensor\(([-0-9.e+]+)", printed).group(1)) < 1e-5, printed
