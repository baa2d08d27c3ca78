"""Drawing a map: a heat map, or a grid of them, sized to its labels."""

from __future__ import annotations

import os
import textwrap

from transformer.translation.attention_maps.sentence import SentenceMap

CELL_INCHES = 0.32
LABEL_INCHES = 1.6  # room for tick labels and titles
COLORBAR_INCHES = 1.0


def figure_size(
    rows: int, cols: int, grid_rows: int = 1, grid_cols: int = 1
) -> tuple[float, float]:
    """(width, height) in inches of a figure of grid_rows x grid_cols maps of rows x cols cells.

    The PNG is exactly ``round(width * dpi)`` by ``round(height * dpi)`` pixels.
    """
    width = grid_cols * (max(cols, 6) * CELL_INCHES + LABEL_INCHES) + COLORBAR_INCHES
    height = grid_rows * (max(rows, 6) * CELL_INCHES + LABEL_INCHES) + 0.6
    return width, height


def _axis_names(kind: str, units: str = "pieces") -> tuple[str, str]:
    unit = "word" if units == "words" else "token"
    return {
        "cross": (f"generated {unit}", f"source {unit}"),
        "encoder": (f"source {unit} (query)", f"source {unit} (key)"),
        "decoder": (f"decoder input {unit} (query)", f"decoder input {unit} (key)"),
    }[kind]


def _what(layer: int | None, head: int | None) -> str:
    layer_text = "mean over layers" if layer is None else f"layer {layer}"
    head_text = "mean over heads" if head is None else f"head {head}"
    return f"{layer_text}, {head_text}"


def _short(labels: list[str], limit: int = 20) -> list[str]:
    """Tick labels cut to ``limit`` characters: a word merged from many pieces (an untrained
    model's output can be one long unmarked run) must not squeeze the map to nothing."""
    return [label if len(label) <= limit else label[: limit - 1] + "…" for label in labels]


def draw_map(sentence_map: SentenceMap, dpi: int = 100):
    """A matplotlib Figure of the heat map(s): queries down the side, keys along the top, one
    colour bar. Built without pyplot, so it touches no global backend (a notebook can show it).
    """
    from matplotlib.figure import Figure

    m = sentence_map
    weights = m.weights if m.grid else m.weights[None, None]
    grid_rows, grid_cols = weights.shape[:2]
    rows, cols = weights.shape[-2:]
    fig = Figure(
        figsize=figure_size(rows, cols, grid_rows, grid_cols), dpi=dpi, layout="constrained"
    )
    axes = fig.subplots(grid_rows, grid_cols, squeeze=False)
    vmax = max(float(weights.max()), 1e-9) if weights.numel() else 1.0
    query_name, key_name = _axis_names(m.kind, m.units)
    image = None
    for r in range(grid_rows):
        for c in range(grid_cols):
            ax = axes[r, c]
            image = ax.imshow(
                weights[r, c].numpy(), cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto"
            )
            ax.set_xticks(range(cols), _short(m.key_tokens), rotation=90, fontsize=8)
            ax.set_yticks(range(rows), _short(m.query_tokens), fontsize=8)
            ax.xaxis.tick_top()
            if m.grid:
                ax.set_title(f"layer {m.layers[r]}, head {m.heads[c]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(query_name)
            if r == grid_rows - 1:
                ax.set_xlabel(key_name)
    what = "every head" if m.grid else _what(m.layer, m.head)
    width_chars = int(fig.get_figwidth() / 0.09)  # about one 10-point character per 0.09 inch
    units = "words" if m.units == "words" else "BPE pieces"
    lines = [f"{m.kind} attention over {units}, {what} ({m.method} weights)", m.source]
    lines.append(f"→ {m.translation}")
    fig.suptitle("\n".join(textwrap.fill(line, width_chars) for line in lines), fontsize=10)
    fig.colorbar(image, ax=axes, label="attention weight", shrink=0.8)
    return fig


def image_formats() -> dict[str, str]:
    """The file extensions matplotlib can write a figure as (png, pdf, svg, ...), with names."""
    from matplotlib.figure import Figure

    return Figure().canvas.get_supported_filetypes()


def output_problem(path: str | os.PathLike) -> str | None:
    """Why a figure cannot be written to ``path`` in the format its extension names, or None
    (matplotlib would add ``.png`` to a name without one, and write elsewhere than asked)."""
    suffix = os.path.splitext(os.fspath(path))[1].lstrip(".").lower()
    formats = image_formats()
    if suffix in formats:
        return None
    names = ", ".join(f".{extension}" for extension in sorted(formats))
    what = f"'.{suffix}' is not an image format" if suffix else "no file extension"
    return f"{path}: {what}; use one of {names}"


def plot_map(sentence_map: SentenceMap, path: str | os.PathLike, dpi: int = 100) -> None:
    """Write the heat map(s) in the format of ``path``'s extension (see :func:`output_problem`),
    exactly :func:`figure_size` inches times ``dpi``."""
    draw_map(sentence_map, dpi).savefig(path, dpi=dpi)
