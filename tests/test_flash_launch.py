"""How the flash-attention kernel's launcher lays out the work: every tile shape of the launch
tables matches the float64 reference in both loop stages, every buffer it allocates is written,
empty lengths and an empty grid (batch or heads of 0) launch nothing wrong, and strided
(non-contiguous) inputs give exactly the contiguous result. Parity checks use the criterion of
tests/flash_reference.py.
"""

import importlib

import pytest
import torch
from flash_reference import (
    DEVICE,
    assert_close_as_flash_attention_does,
    output_and_grads,
    random_inputs,
    random_key_mask,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention
from kernels.common import runtime
from kernels.common.tuning import LaunchConfig

# The reference helpers build their inputs on the kernel_device fixture's device (devices.py).
pytestmark = pytest.mark.usefixtures("kernel_device")

# The launch tables (`kernels.flash_attention` as an attribute is the function the package
# re-exports).
fa_configs = importlib.import_module("kernels.flash_attention.configs")


def test_non_contiguous_inputs_and_grad_match_contiguous():
    q, k, v, dout = random_inputs(2, 3, 21, 33, 24, torch.float32)
    # (b, n, h, d) storage seen as (b, h, n, d), as a model's head split produces
    as_bnhd = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, dout)]
    assert not as_bnhd[0].is_contiguous()
    want = output_and_grads(flash_attention, q, k, v, dout, torch.float32, is_causal=True)
    got = output_and_grads(flash_attention, *as_bnhd, torch.float32, is_causal=True)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


def test_every_output_element_is_written(monkeypatch):
    """Every buffer the launchers allocate is pre-filled with NaN; none may survive."""

    def poisoned(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(runtime, "empty", poisoned)
    q, k, v, dout = random_inputs(2, 2, 70, 45, 40, torch.float16)
    mask = random_key_mask(2, 45)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert not lse.isnan().any()
    for t in (out, *(leaf.grad for leaf in leaves)):
        assert torch.isfinite(t).all()


# (BLOCK_M, BLOCK_N) as the launcher may pick them on a GPU: every tile shape in the launch
# tables (16-bit and float32, every kernel), plus 16x16. Lengths per shape (block_lengths) are
# the smallest that run both loop stages -- whole blocks unchecked, partial or diagonal blocks
# masked -- in every pass: a whole and a partial query tile, and a causal shift of more than a
# key block, so that some key blocks are wholly visible to a query tile; then the lengths swapped
# (the first queries see no key). Head dim 40 is padded to 64 inside the kernel.
TABLE_BLOCKS = sorted(
    {(c.block_m, c.block_n) for table in (fa_configs.CONFIGS_16BIT, fa_configs.CONFIGS_FLOAT32)
     for configs in table.values() for c in configs} | {(16, 16)}
)  # fmt: skip
# A representative few run by default (narrow queries / wide keys, the reverse, square); the
# interpreter is slow with large tiles, so the whole table is marked slow.
DEFAULT_BLOCKS = [(16, 64), (64, 32), (32, 32)]


def block_lengths(block_m, block_n):
    len_q = block_m + 3
    return [(len_q, len_q + block_n + 5), (len_q + block_n + 5, len_q)]


def assert_blocks_match_the_reference(blocks, head_dim, monkeypatch, maskings):
    forced = [LaunchConfig(*blocks, 4, 1)]
    monkeypatch.setattr(fa_configs, "for_kernel", lambda name, q, d, dropout: forced)
    for len_q, len_k in block_lengths(*blocks):
        q, k, v, dout = random_inputs(2, 1, len_q, len_k, head_dim, torch.float32, seed=len_q)
        for masked, is_causal in maskings:
            mask = random_key_mask(2, len_k) if masked else None
            assert_close_as_flash_attention_does(q, k, v, dout, attn_mask=mask, is_causal=is_causal)


@pytest.mark.parametrize("head_dim", [40, 32])
@pytest.mark.parametrize("blocks", DEFAULT_BLOCKS, ids=str)
def test_launch_table_block_sizes_match_the_reference_in_both_loop_stages(
    blocks, head_dim, monkeypatch
):
    assert set(DEFAULT_BLOCKS) <= set(TABLE_BLOCKS)
    maskings = [(True, True)] if head_dim == 40 else [(False, False)]
    assert_blocks_match_the_reference(blocks, head_dim, monkeypatch, maskings)


@pytest.mark.slow
@pytest.mark.parametrize("blocks", TABLE_BLOCKS, ids=str)
def test_every_launch_table_block_size_matches_the_reference_with_every_masking(
    blocks, monkeypatch
):
    maskings = [(False, False), (False, True), (True, False), (True, True)]
    assert_blocks_match_the_reference(blocks, 40, monkeypatch, maskings)


def test_empty_lengths():
    q, k, v, _ = random_inputs(1, 2, 5, 0, 16, torch.float32)
    out, lse = flash_attention(q, k, v, return_lse=True)
    assert (out == 0).all() and (lse == float("-inf")).all()
    q, k, v, _ = random_inputs(1, 2, 0, 5, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves)
    out.sum().backward()
    assert out.shape == (1, 2, 0, 16) and (leaves[1].grad == 0).all()


@pytest.mark.parametrize("batch,heads", [(0, 2), (2, 0), (0, 0)])
def test_batch_or_heads_of_zero_give_empty_outputs_and_gradients(batch, heads, monkeypatch):
    """Nothing is launched on an empty grid (a GPU refuses a grid dimension of 0)."""
    from triton.runtime.jit import KernelInterface

    grids, getitem = [], KernelInterface.__getitem__
    monkeypatch.setattr(
        KernelInterface,
        "__getitem__",
        lambda kernel, grid: grids.append(grid) or getitem(kernel, grid),
    )
    q, k, v, dout = random_inputs(batch, heads, 5, 7, 16, torch.float32)
    mask = torch.ones(batch, 1, 1, 7, dtype=torch.bool, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = flash_attention(*leaves, attn_mask=mask, is_causal=True, return_lse=True)
    out.backward(dout)
    assert out.shape == (batch, heads, 5, 16) and lse.shape == (batch, heads, 5)
    assert [leaf.grad.shape for leaf in leaves] == [t.shape for t in (q, k, v)]
    assert grids == []  # every grid has batch * heads = 0 programs
