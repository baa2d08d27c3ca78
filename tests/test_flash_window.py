"""Sliding windows (``window_size=(left, right)``, FlashAttention-2's semantics): query i sees
key j iff a(i) - left <= j <= a(i) + right, a(i) anchored like causality (i top-left, i +
len_k - len_q bottom-right); -1 unbounded; causality is right = 0.

Parity against tests/flash_reference.py's float64 reference (its criterion), and the block
ranges the kernels visit: a test kernel runs the kernels' own range functions
(``forward._visible_key_blocks`` for the forward and dQ passes, ``backward._seen_query_blocks``
for the dK/dV pass) and the test checks that they visit exactly the blocks holding a visible
pair -- key blocks wholly outside the window are never visited -- and that the blocks they run
unmasked hold only visible pairs.
"""

import pytest
import torch
import triton
import triton.language as tl
from flash_reference import (
    SLOW,
    allowed_pairs,
    assert_close_as_flash_attention_does,
    random_inputs,
    random_key_mask,
    random_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention
from kernels.common import runtime, tuning
from kernels.flash_attention.backward import _seen_query_blocks
from kernels.flash_attention.forward import _visible_key_blocks

pytestmark = pytest.mark.usefixtures("kernel_device")

# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "len_q, len_k, window, extra",
    [
        (37, 53, (8, 0), {}),
        (53, 37, (5, 3), {}),
        (37, 53, (-1, 4), {}),
        (37, 53, (6, -1), dict(alignment="bottom_right")),
        (53, 37, (7, 2), dict(is_causal=True, alignment="bottom_right")),
        (40, 40, (0, 0), {}),
    ],
    ids=["left", "both_more_queries", "right_only", "left_bottom_right", "causal", "diagonal"],
)
def test_window_matches_the_reference_forward_and_gradients(len_q, len_k, window, extra):
    q, k, v, dout = random_inputs(2, 2, len_q, len_k, 16, torch.float32, seed=len_q + len_k)
    assert_close_as_flash_attention_does(q, k, v, dout, window_size=window, **extra)


@pytest.fixture
def small_blocks(monkeypatch):
    """16 x 16 tiles under the interpreter (its one config is 64 x 64), so that short inputs
    span many blocks: skipped, lower-edge, whole and upper-edge ones."""
    if not runtime.INTERPRETED:
        pytest.skip("the interpreter's launch config only")
    monkeypatch.setattr(tuning, "INTERPRETER_CONFIG", tuning.LaunchConfig(16, 16, 4, 1))


@pytest.mark.parametrize(
    "len_q, len_k, window, extra",
    [
        (37, 53, (8, 0), dict(enable_gqa=True)),
        (53, 37, (5, 3), dict(alignment="bottom_right")),
        (37, 53, (20, 1), dict(is_causal=True, alignment="bottom_right")),
        (37, 53, (-1, 17), {}),
    ],
    ids=["left_gqa", "both_bottom_right", "causal_bottom_right", "right_only"],
)
def test_window_over_many_blocks_matches_the_reference(small_blocks, len_q, len_k, window, extra):
    heads_kv = 1 if extra.get("enable_gqa") else 2
    q, k, v, dout = random_inputs(1, 2, len_q, len_k, 16, torch.float32, seed=7, heads_kv=heads_kv)
    assert_close_as_flash_attention_does(q, k, v, dout, window_size=window, **extra)


def test_window_with_gqa_key_mask_and_float_bias_matches_the_reference():
    q, k, v, dout = random_inputs(2, 4, 37, 53, 24, torch.float32, seed=11, heads_kv=2)
    mask = random_key_mask(2, 53, seed=11)
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=mask, window_size=(9, 2), enable_gqa=True
    )
    bias = random_mask((1, 4, 37, 53), "float", seed=12)
    assert_close_as_flash_attention_does(
        q, k, v, dout, attn_mask=bias, window_size=(9, 2), enable_gqa=True, is_causal=True
    )


def test_a_row_outside_every_key_gets_zeros_and_minus_inf_lse():
    # Top-left with a right-only window that ends before key 0 for no row, but bottom-right
    # with len_q > len_k and a window of 0 to the left: the first rows see no key.
    q, k, v, _ = random_inputs(1, 1, 20, 6, 16, torch.float32, seed=13)
    out, lse = flash_attention(
        q, k, v, window_size=(0, 0), alignment="bottom_right", return_lse=True
    )  # fmt: skip
    assert (out[:, :, :14] == 0).all() and (lse[:, :, :14] == float("-inf")).all()
    assert torch.isfinite(lse[:, :, 14:]).all()


@SLOW
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("len_q, len_k", [(97, 97), (37, 200), (200, 37)])
@pytest.mark.parametrize("window", [(0, 0), (16, 16), (33, -1), (-1, 5)])
@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
def test_window_grid_matches_the_reference(dtype, len_q, len_k, window, alignment):
    q, k, v, dout = random_inputs(1, 2, len_q, len_k, 32, dtype, seed=len_q * 7 + len_k)
    assert_close_as_flash_attention_does(
        q, k, v, dout, window_size=window, alignment=alignment
    )  # fmt: skip


# ----------------------------------------------------------------------------- block skipping


@triton.jit
def _ranges_kernel(
    Out, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
    WINDOW_LEFT: tl.constexpr, WINDOW_RIGHT: tl.constexpr, KEY_SIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Out[tile] = the four bounds the kernels compute for query tile (or, KEY_SIDE, key
    block) number program_id(0)."""
    tile = tl.program_id(0)
    if KEY_SIDE:
        ranges = _seen_query_blocks(
            tile * BLOCK_N, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
            WINDOW_LEFT, WINDOW_RIGHT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    else:
        ranges = _visible_key_blocks(
            tile * BLOCK_M, LEN_Q, LEN_K, anchor_shift, window_left, window_right,
            WINDOW_LEFT, WINDOW_RIGHT, BLOCK_M, BLOCK_N,
        )  # fmt: skip
    tl.store(Out + tile * 4 + 0, ranges[0])
    tl.store(Out + tile * 4 + 1, ranges[1])
    tl.store(Out + tile * 4 + 2, ranges[2])
    tl.store(Out + tile * 4 + 3, ranges[3])


def block_ranges(len_q, len_k, shift, left, right, key_side, block_m=16, block_n=16):
    """(tiles, 4) int: the kernels' bounds per query tile (per key block with key_side)."""
    tiles = triton.cdiv(len_k if key_side else len_q, block_n if key_side else block_m)
    out = torch.zeros(tiles, 4, dtype=torch.int32)
    _ranges_kernel[(tiles,)](
        out, len_q, len_k, shift, left, right, left >= 0, right >= 0, key_side,
        BLOCK_M=block_m, BLOCK_N=block_n,
    )  # fmt: skip
    return out.tolist()


def check_visits(len_q, len_k, window, bottom_right, key_side, block_m=16, block_n=16):
    """The visited blocks are exactly those with a visible pair, the unmasked ones wholly
    visible; returns (pairs visited, pairs of the full (len_q, len_k) grid) in blocks."""
    allowed = allowed_pairs(
        len_q, len_k, None, False, "cpu", bottom_right=bottom_right, window=window
    )[0, 0]  # fmt: skip
    if key_side:
        allowed, tile, block = allowed.T, block_n, block_m  # rows: keys; blocks of queries
    else:
        tile, block = block_m, block_n
    shift = len_k - len_q if bottom_right else 0
    ranges = block_ranges(len_q, len_k, shift, *window, key_side, block_m, block_n)
    visited_area = 0
    for t, (start, whole_start, whole_stop, stop) in enumerate(ranges):
        rows = allowed[t * tile : (t + 1) * tile]
        needed = {j // block for j in rows.any(0).nonzero().flatten().tolist()}
        visited = (
            set(range(start // block, triton.cdiv(max(stop, 0), block))) if stop > start else set()
        )
        assert visited == needed, f"tile {t}: visits {sorted(visited)}, needs {sorted(needed)}"
        assert start <= whole_start <= whole_stop <= max(stop, start)
        assert bool(rows[:, whole_start:whole_stop].all()), (
            f"tile {t}: an unmasked block hides pairs"
        )
        visited_area += len(visited)
    return visited_area, len(ranges) * triton.cdiv(allowed.shape[1], block)


@pytest.mark.parametrize("key_side", [False, True], ids=["query_tiles", "key_blocks"])
@pytest.mark.parametrize(
    "len_q, len_k, window, bottom_right",
    [
        (100, 100, (20, 0), False),
        (70, 130, (15, 7), False),
        (130, 70, (15, 7), True),
        (90, 90, (-1, 0), True),
        (90, 90, (0, -1), False),
        (64, 96, (-1, -1), False),
        (50, 80, (3, 40), True),
    ],
)
def test_kernels_visit_exactly_the_blocks_holding_visible_pairs(
    len_q, len_k, window, bottom_right, key_side
):  # fmt: skip
    check_visits(len_q, len_k, window, bottom_right, key_side)


def test_a_window_of_64_at_1024_tokens_visits_at_most_a_third_of_the_blocks():
    # The forward and dQ tiles (64 x 64) and the dK/dV key blocks: a causal window of 64 keys.
    for key_side in (False, True):
        visited, full = check_visits(1024, 1024, (64, 0), False, key_side, 64, 64)
        assert visited <= full / 3, (visited, full)
