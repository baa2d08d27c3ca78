"""Readability limits the code keeps, and the direction its imports run.

In ``transformer/`` (subpackages included) no function is longer than a screen or two; in the
whole project (``transformer/``, ``kernels/``, ``benchmarks/``, ``tests/``, ``train.py``) no
Python file is longer than ~400 lines; the model library (the modules directly in ``transformer/``) imports
nothing from the translation application (``transformer.translation``) built on it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "transformer"
PROJECT_DIRS = ("transformer", "kernels", "benchmarks", "tests")
APPLICATION = "transformer.translation"
MAX_FUNCTION_LINES = 120
MAX_FILE_LINES = 400


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` longer than ``limit`` lines."""
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > limit
    ]


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> set[str]:
    """Every module ``source`` (the module named ``module``) imports, relative imports resolved;
    for ``from X import a`` both ``X`` and ``X.a`` (``a`` may be a submodule)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                if not is_package:
                    parts = parts[:-1]
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                origin = f"{base}.{node.module}" if node.module else base
            else:
                origin = node.module
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def application_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The application modules among ``source``'s imports."""
    return sorted(
        name
        for name in imported_modules(source, module, is_package)
        if name == APPLICATION or name.startswith(APPLICATION + ".")
    )


def test_the_length_check_finds_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n    pass\n\ndef long():\n{body}", MAX_FUNCTION_LINES) == [
        ("long", MAX_FUNCTION_LINES + 1)
    ]


def test_no_function_in_the_package_is_over_120_lines():
    too_long = {
        f"{path.relative_to(PACKAGE)}:{name}": lines
        for path in package_files()
        for name, lines in long_functions(path.read_text(), MAX_FUNCTION_LINES)
    }
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def project_files() -> list[Path]:
    """Every Python file of the project (its packages, benchmarks, tests and train.py)."""
    files = [ROOT / "train.py"]
    for directory in PROJECT_DIRS:
        files += sorted((ROOT / directory).rglob("*.py"))
    return files


def test_no_file_in_the_project_is_over_400_lines():
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in project_files()
        if (lines := len(path.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not too_long, f"files over {MAX_FILE_LINES} lines (split them by concern): {too_long}"


def test_the_file_check_sees_every_part_of_the_project():
    seen = {path.relative_to(ROOT).parts[0] for path in project_files()}
    assert seen == {*PROJECT_DIRS, "train.py"}


def test_the_import_check_finds_every_way_to_import_the_application():
    ways = [
        "import transformer.translation.data",
        "from transformer.translation.tokenizer import PAD_ID",
        "from transformer import translation",
        "from .translation import training",
        "from . import translation",
        "def later():\n    from .translation.checkpoint import save_checkpoint",
    ]
    for source in ways:
        assert application_imports(source, "transformer.model"), source
    allowed = (
        "from .attention import attend\nfrom transformer.config import ModelConfig\nimport torch"
    )
    assert application_imports(allowed, "transformer.model") == []
    # Inside the application, a relative import resolves to the application itself.
    assert application_imports("from .data import load_split", "transformer.translation.cli")


def test_the_model_library_imports_nothing_from_the_translation_application():
    library = [path for path in package_files() if path.parent == PACKAGE]
    assert {module_name(path) for path in library} >= {"transformer", "transformer.model"}
    upward = {
        module_name(path): found
        for path in library
        if (
            found := application_imports(
                path.read_text(), module_name(path), path.stem == "__init__"
            )
        )
    }
    assert not upward, f"library modules importing the application: {upward}"


ROOT = PACKAGE.parent
MAP = ROOT / "docs" / "architecture.md"


def tree_paths(markdown: str) -> list[str]:
    """The paths named by the fenced tree under ``## The tree``: two spaces of indent per level,
    the first word of each line a file or ``folder/``."""
    block = markdown.split("## The tree", 1)[1].split("```", 2)[1]
    paths, folders = [], []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        path = "".join(folders) + name
        paths.append(path.rstrip("/"))
        if name.endswith("/"):
            folders.append(name)
    return paths


def test_the_tree_reader_nests_by_indent():
    markdown = "## The tree\n```\na/   x\n  b.py  y\n  c/\n    d.py\ne.py\n```\n"
    assert tree_paths(markdown) == ["a", "a/b.py", "a/c", "a/c/d.py", "e.py"]


def test_the_architecture_map_matches_the_tree():
    named = tree_paths(MAP.read_text())
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"
    unnamed = [
        str(path.relative_to(ROOT))
        for path in package_files()
        if str(path.relative_to(ROOT)) not in named
    ]
    assert not unnamed, f"docs/architecture.md does not name: {unnamed}"
