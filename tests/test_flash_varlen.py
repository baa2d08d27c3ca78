"""Packed sequences (``flash_attn_varlen_func``): the kernel on (total, heads, dim) tensors with
cumulative lengths equals each sequence run alone (float64 reference), empty sequences and
length-1 ones included, with GQA, bottom-right causality per sequence and reproducible
dropout, in the output and every gradient; it equals the padded kernel under a key-padding
mask; one launch per pass, no padding, no copy; bad cumulative lengths are refused clearly.

Criterion (tests/flash_reference.py): the kernel's largest error against float64 is at most
twice that of the naive computation in the kernel's dtype, plus a small floor.
"""

import pytest
import torch
from flash_reference import (
    DEVICE,
    assert_close_as_flash_attention_does,
    fa2_reference,
    kernel_input_pointers,
    report_largest_errors,  # noqa: F401 (autouse: -s prints the largest errors)
)

from kernels import flash_attention
from kernels.common import runtime, warm
from kernels.flash_attention import dropout_keep_mask, flash_attn_varlen_func, function, varlen
from kernels.flash_attention.dropout import draw_seed_offset

pytestmark = pytest.mark.usefixtures("kernel_device")


def cumulative(lengths):
    """(batch + 1,) int32 cumulative lengths from 0."""
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32).to(
        DEVICE
    )


def packed_inputs(lens_q, lens_k, heads, heads_kv, head_dim, dtype, seed=0, d_v=None):
    """q (total_q, h, d), k (total_k, h_kv, d), v (total_k, h_kv, d_v), dout (total_q, h,
    d_v), standard normal, and the call's cumulative-length keywords."""
    gen = torch.Generator().manual_seed(seed)
    d_v = head_dim if d_v is None else d_v
    shapes = (
        (sum(lens_q), heads, head_dim),
        (sum(lens_k), heads_kv, head_dim),
        (sum(lens_k), heads_kv, d_v),
        (sum(lens_q), heads, d_v),
    )
    tensors = [torch.randn(shape, generator=gen).to(DEVICE, dtype) for shape in shapes]
    lengths = dict(
        cu_seqlens_q=cumulative(lens_q), cu_seqlens_k=cumulative(lens_k),
        max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
    )  # fmt: skip
    return tensors, lengths


def each_sequence_alone(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
    keeps=None, sinks=None,
):  # fmt: skip
    """The reference: FlashAttention-2's attention run on each sequence by itself (a Python
    loop, as the kernel never does), outputs packed again. ``keeps``: per sequence, the
    (1, h, len_q, len_k) dropout keep-mask; (batch, h) ALiBi slopes: row s for sequence s."""
    outs = []
    for s in range(cu_seqlens_q.shape[0] - 1):
        q_s = q[cu_seqlens_q[s] : cu_seqlens_q[s + 1]][None]
        k_s, v_s = (t[cu_seqlens_k[s] : cu_seqlens_k[s + 1]][None] for t in (k, v))
        slopes = alibi_slopes
        if slopes is not None and slopes.dim() == 2:
            slopes = slopes[s]
        out = fa2_reference(
            q_s, k_s, v_s, dropout_p, softmax_scale, causal, window_size, softcap, slopes,
            None if keeps is None else keeps[s], sinks,
        )  # fmt: skip
        outs.append(out[0])
    return torch.cat(outs)


# (lengths of the queries, of the keys): empty sequences (queries, keys or both), length 1,
# odd lengths across a block (64 under the interpreter), len_q != len_k both ways
LENGTHS = [
    ([5, 0, 70, 1, 0], [9, 3, 66, 1, 0]),
    ([1, 33, 7], [1, 33, 7]),
    ([65, 2, 17], [0, 130, 9]),
]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lengths", LENGTHS, ids=["empty", "self", "ragged"])
@pytest.mark.parametrize("heads_kv", [3, 1], ids=["mha", "mqa"])
def test_packed_sequences_equal_each_sequence_alone_in_output_and_gradients(
    lengths, causal, heads_kv
):  # fmt: skip
    (q, k, v, dout), cu = packed_inputs(*lengths, 3, heads_kv, 16, torch.float32)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=each_sequence_alone, kernel=flash_attn_varlen_func,
        causal=causal, **cu,
    )  # fmt: skip


# FlashAttention-2's window, softcap and ALiBi per sequence, anchored bottom-right in each
PACKED_OPTIONS = {
    "causal-window": dict(window_size=(3, 9), causal=True),
    "window-softcap": dict(window_size=(20, 2), softcap=1.5),
    "alibi-per-sequence": dict(alibi_slopes=torch.rand(3, 2) / 2, causal=True),
    "sinks-window": dict(sinks=torch.tensor([-1.5, 1.0]), window_size=(3, 9), causal=True),
}


@pytest.mark.parametrize("options", PACKED_OPTIONS.values(), ids=PACKED_OPTIONS.keys())
def test_packed_windows_softcap_alibi_and_sinks_equal_each_sequence_alone(options):
    (q, k, v, dout), cu = packed_inputs([9, 70, 0], [31, 66, 4], 2, 1, 16, torch.float32, seed=8)
    options = {
        name: value.to(DEVICE) if isinstance(value, torch.Tensor) else value
        for name, value in options.items()
    }
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=each_sequence_alone, kernel=flash_attn_varlen_func,
        **options, **cu,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_packed_sequences_in_16_bit_with_gqa_are_as_close_as_naive_attention(dtype):
    (q, k, v, dout), cu = packed_inputs([37, 1, 53], [53, 8, 37], 4, 2, 40, dtype, seed=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=each_sequence_alone, kernel=flash_attn_varlen_func,
        causal=True, softmax_scale=0.2, **cu,
    )  # fmt: skip


def test_keys_no_query_reads_get_zero_gradients_and_rows_without_keys_zero_output():
    (q, k, v, dout), cu = packed_inputs([0, 4], [5, 0], 2, 2, 16, torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse, none = flash_attn_varlen_func(*leaves, **cu, return_attn_probs=True)
    out.backward(dout)
    assert none is None and lse.shape == (2, 4)
    assert (out == 0).all() and (lse == float("-inf")).all()
    assert all((t.grad == 0).all() for t in leaves)


def test_packed_dropout_is_reproducible_and_matches_the_reference_fed_its_keep_masks():
    """Each (sequence, head)'s keep bits are dropout_keep_mask's at the offset the kernels
    give it: offset + s * heads * total_q * total_k + h * total_q * len_k (tiles.py)."""
    lens_q, lens_k, heads, p = [6, 0, 19], [11, 4, 23], 2, 0.4
    (q, k, v, dout), cu = packed_inputs(lens_q, lens_k, heads, 1, 16, torch.float32, seed=4)
    torch.manual_seed(7)
    seed, offset = draw_seed_offset()
    total_q, total_k = sum(lens_q), sum(lens_k)

    def keep_mask(s, h):
        at = offset + s * heads * total_q * total_k + h * total_q * lens_k[s]
        return dropout_keep_mask(seed, at, 1, 1, lens_q[s], lens_k[s], p, DEVICE)

    keeps = [torch.cat([keep_mask(s, h) for h in range(heads)], dim=1) for s in range(3)]
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash_attn_varlen_func(*leaves, **cu, dropout_p=p, causal=True)
        out.backward(dout)
        runs.append([out, *(t.grad for t in leaves)])
    for first, second in zip(*runs, strict=True):
        torch.testing.assert_close(first, second, rtol=0, atol=0)
    exact = [t.double().requires_grad_() for t in (q, k, v)]
    ref = each_sequence_alone(*exact, **cu, dropout_p=p, causal=True, keeps=keeps)
    ref.backward(dout.double())
    for got, want in zip(runs[0], (ref, *(t.grad for t in exact)), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_packed_sequences_equal_the_padded_kernel_under_a_key_padding_mask(causal):
    """Self-attention, padded on the right to the longest sequence: the padded kernel with a
    key-padding mask gives the packed kernel's output on every real query."""
    lens, heads, dim = [7, 1, 20], 2, 16
    (q, k, v, _), cu = packed_inputs(lens, lens, heads, heads, dim, torch.float32, seed=9)
    packed = flash_attn_varlen_func(q, k, v, **cu, causal=causal)
    longest = max(lens)
    padded = [torch.zeros(len(lens), heads, longest, dim, device=DEVICE) for _ in range(3)]
    key_mask = torch.zeros(len(lens), 1, 1, longest, dtype=torch.bool, device=DEVICE)
    for s, n in enumerate(lens):
        for dst, src in zip(padded, (q, k, v), strict=True):
            dst[s, :, :n] = src[cu["cu_seqlens_q"][s] : cu["cu_seqlens_q"][s + 1]].transpose(0, 1)
        key_mask[s, ..., :n] = True
    out = flash_attention(*padded, attn_mask=key_mask, is_causal=causal)
    for s, n in enumerate(lens):
        got = packed[cu["cu_seqlens_q"][s] : cu["cu_seqlens_q"][s + 1]]
        torch.testing.assert_close(got, out[s, :, :n].transpose(0, 1), rtol=0, atol=1e-6)


def test_each_pass_is_one_launch_over_sequences_heads_and_the_longest_sequences_blocks():
    lens_q, lens_k = [3, 130, 0, 9], [5, 64, 2, 200]
    (q, k, v, dout), cu = packed_inputs(lens_q, lens_k, 2, 1, 16, torch.float32)
    launches = []

    def record(launch):
        launches.append(launch)
        return launch.run()

    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    with runtime.hooked(runtime.Hook(on_launch=record)):
        flash_attn_varlen_func(*leaves, **cu).backward(dout)
    # Each pass's launch that ran (the last of its kernel's: a CUDA host's tuner, and the default
    # run's rehearsal of it, may launch a candidate configuration first).
    grids = {launch.kernel.__name__: launch.grid for launch in launches}
    assert sorted(grids) == ["_attn_bwd_dkdv", "_attn_bwd_dq", "_attn_fwd", "attn_bwd_delta"]
    assert grids["_attn_fwd"] == (4 * 2, 3)  # 130 queries in blocks of 64
    assert grids["_attn_bwd_dq"] == (4 * 2, 3)
    assert grids["_attn_bwd_dkdv"] == (4 * 1, 4)  # 200 keys, one key/value head
    assert grids["attn_bwd_delta"] == (2, 3)  # the packed (h, total_q) rows: 142 of them


def test_packed_causal_calls_compile_no_kernel_for_the_totals_unread_anchor_shift():
    """Each packed program anchors its causality (window, ALiBi) at its own sequence's len_k -
    len_q, read from the cumulative lengths; the totals' shift is unread, so it does not pick
    the kernel: totals differing by 1 and by 2 (Triton's int classes "one" and "other", with
    the totals' own classes equal) launch the same compile jobs."""

    def jobs(lens_k):
        (q, k, v, _), cu = packed_inputs([16, 16], lens_k, 2, 2, 16, torch.float32)
        with warm.recording("first") as launches:
            flash_attn_varlen_func(q, k, v, causal=True, window_size=(8, 0), **cu)
        return set(warm.compile_jobs(launches))

    assert jobs([16, 17]) == jobs([16, 18])


def test_packed_sequences_are_read_in_place(monkeypatch):
    seen = kernel_input_pointers(monkeypatch)
    (q, k, v, _), cu = packed_inputs([3, 4], [5, 6], 2, 2, 16, torch.float32)
    flash_attn_varlen_func(q, k, v, **cu)
    assert seen == [q.data_ptr(), k.data_ptr(), v.data_ptr()]


def strided(cu, junk):
    """The same cumulative lengths as a strided view (every other element of a longer tensor,
    ``junk`` in between): what the kernel would read as the lengths if it ignored the stride."""
    interleaved = torch.stack([cu, torch.full_like(cu, junk)], dim=1).flatten()[:-1]
    view = interleaved[::2]
    assert not view.is_contiguous() and torch.equal(view, cu)
    return view


def test_strided_cumulative_lengths_are_read_by_value_as_each_sequence_alone():
    # Read ignoring their stride, [0, 1, 5, 1] (junk 1 between the values) would give
    # sequences of 1, 4 and -4 queries: wrong rows, not an error.
    (q, k, v, dout), cu = packed_inputs([5, 1, 30], [5, 1, 30], 2, 2, 16, torch.float32)
    cu["cu_seqlens_q"] = strided(cu["cu_seqlens_q"], junk=1)
    cu["cu_seqlens_k"] = strided(cu["cu_seqlens_k"], junk=2)
    assert_close_as_flash_attention_does(
        q, k, v, dout, reference=each_sequence_alone, kernel=flash_attn_varlen_func,
        causal=True, **cu,
    )  # fmt: skip


def test_a_paged_cache_block_table_is_refused_and_none_is_flash_attns_default():
    (q, k, v, _), cu = packed_inputs([2, 3], [4, 1], 2, 2, 16, torch.float32)
    lengths = (cu["cu_seqlens_q"], cu["cu_seqlens_k"], cu["max_seqlen_q"], cu["max_seqlen_k"])
    # FlashAttention-2's full positional order, block_table last.
    out = flash_attn_varlen_func(q, k, v, *lengths, 0.0, None, True, (-1, -1), 0.0, None,
                                 False, False, None)  # fmt: skip
    torch.testing.assert_close(out, flash_attn_varlen_func(q, k, v, *lengths, causal=True))
    table = torch.zeros(2, 1, dtype=torch.int32, device=q.device)
    with pytest.raises(ValueError, match="block_table \\(a paged key/value cache\\)"):
        flash_attn_varlen_func(q, k, v, *lengths, causal=True, block_table=table)


def _bad(cu, **changes):
    return {**cu, **changes}


BAD_LENGTHS = [
    (lambda cu: _bad(cu, cu_seqlens_q=cu["cu_seqlens_q"].long()), TypeError, "int32"),
    (lambda cu: _bad(cu, cu_seqlens_k=cu["cu_seqlens_k"] + 1), ValueError, "start at 0"),
    (
        lambda cu: _bad(cu, cu_seqlens_q=torch.tensor([0, 5, 3, 7], dtype=torch.int32)),
        ValueError,
        "not decrease",
    ),
    (
        lambda cu: _bad(cu, cu_seqlens_q=torch.tensor([0, 3, 5, 6], dtype=torch.int32)),
        ValueError,
        "end at the packed total",
    ),
    (lambda cu: _bad(cu, max_seqlen_k=3), ValueError, "max_seqlen_k = 3 is shorter"),
    (lambda cu: _bad(cu, cu_seqlens_k=cu["cu_seqlens_k"][:-1]), ValueError, "batch \\+ 1"),
    (
        lambda cu: _bad(cu, cu_seqlens_q=cu["cu_seqlens_q"].to("meta")),
        ValueError,
        "cu_seqlens_q is on meta",
    ),
    (lambda cu: _bad(cu, max_seqlen_q=-1), ValueError, "max_seqlen_q"),
]


@pytest.mark.parametrize(
    "change, error, message", BAD_LENGTHS,
    ids=["int64", "start", "decreasing", "total", "max", "batch", "device", "negative"],
)  # fmt: skip
def test_bad_cumulative_lengths_are_refused_naming_the_argument(change, error, message):
    (q, k, v, _), cu = packed_inputs([2, 3, 2], [4, 1, 4], 2, 2, 16, torch.float32)
    with pytest.raises(error, match=message):
        flash_attn_varlen_func(q, k, v, **change(cu))


def test_cumulative_lengths_are_not_read_back_while_a_cuda_graph_is_captured(monkeypatch):
    """Reading cu_seqlens back to the host (.tolist(), a synchronisation) is not permitted
    while a CUDA stream is captured: the checks of their values step aside then, as under
    torch.compile, and the rest of the checks still run."""
    (q, k, v, _), cu = packed_inputs([2, 3, 2], [4, 1, 4], 2, 2, 16, torch.float32)
    lengths = (cu["cu_seqlens_q"], cu["cu_seqlens_k"], cu["max_seqlen_q"], cu["max_seqlen_k"])

    def read_back(tensor):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runtime, "capturing", lambda: True)
    monkeypatch.setattr(torch.Tensor, "tolist", read_back)
    varlen.check_packed(q, k, v, *lengths, "flash_attn_varlen_func")
    with pytest.raises(TypeError, match="cu_seqlens_q must be int32"):
        varlen.check_packed(q, k, v, lengths[0].long(), *lengths[1:], "flash_attn_varlen_func")


@pytest.mark.parametrize("shared", [False, True], ids=["q_and_k", "one_for_both"])
def test_the_cumulative_lengths_are_read_back_in_one_transfer(monkeypatch, shared):
    """Reading cu_seqlens to check them synchronises a GPU: once per call, whether q and k
    have their own cumulative lengths or share one tensor (self-attention)."""
    lens_k = [2, 3, 2] if shared else [4, 1, 4]
    (q, k, v, _), cu = packed_inputs([2, 3, 2], lens_k, 2, 2, 16, torch.float32)
    if shared:
        cu["cu_seqlens_k"] = cu["cu_seqlens_q"]
    lengths = (cu["cu_seqlens_q"], cu["cu_seqlens_k"], cu["max_seqlen_q"], cu["max_seqlen_k"])
    reads, tolist = [], torch.Tensor.tolist

    def counted(tensor):
        reads.append(tuple(tensor.shape))
        return tolist(tensor)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    varlen.check_packed(q, k, v, *lengths, "flash_attn_varlen_func")
    assert len(reads) == 1
    bad = lengths[1].clone()
    bad[-1] += 1
    with pytest.raises(ValueError, match="cu_seqlens_k must end at the packed total"):
        varlen.check_packed(q, k, v, lengths[0], bad, *lengths[2:], "flash_attn_varlen_func")


def test_packed_tensors_of_the_wrong_rank_are_refused_with_the_packed_layout():
    (q, k, v, _), cu = packed_inputs([2, 3], [4, 1], 2, 2, 16, torch.float32)
    with pytest.raises(ValueError, match=r"q must have rank 3 \(total_tokens, heads"):
        flash_attn_varlen_func(q[None], k, v, **cu)


def test_packed_sequences_run_under_torch_compile_as_one_graph():
    (q, k, v, _), cu = packed_inputs([3, 0, 9], [4, 2, 9], 2, 1, 16, torch.float32)

    def attend(q, k, v):
        return flash_attn_varlen_func(q, k, v, **cu, causal=True) * 2.0

    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), attend(q, k, v), rtol=0, atol=0)


def test_the_operators_pass_opcheck_with_packed_sequences():
    """torch.library.opcheck of the operators' packed-sequence schema: the fake functions'
    shapes and strides (dq, dk, dv as (total, h, d) views of (h, total, d) buffers), autograd,
    and AOT dispatch with dynamic shapes (what torch.compile relies on)."""
    (q, k, v, dout), cu = packed_inputs([3, 0, 5], [4, 2, 6], 2, 1, 16, torch.float32)
    lengths = (cu["cu_seqlens_q"], cu["cu_seqlens_k"], cu["max_seqlen_q"], cu["max_seqlen_k"])
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    # dropout (p, seed, offset), then bottom_right, the window, softcap, ALiBi, sinks
    options = (0.0, 0, 0, True, 5, -1, 0.0, None, None)
    torch.library.opcheck(function._forward_op, (*leaves, None, True, 0.3, *options, *lengths))
    out, lse = function._forward_op(q, k, v, None, True, 0.3, *options, *lengths)
    dlse = torch.randn(lse.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    args = (q, k, v, None, True, 0.3, out, lse, dout, dlse, False, *options, *lengths)
    torch.library.opcheck(function._backward_op, args)
