"""FlashAttention-2's Python API on our kernel: ``flash_attn_func`` and
``flash_attn_varlen_func``.

Code written for the ``flash_attn`` package runs by changing its import::

    from kernels.flash_attention import flash_attn_func, flash_attn_varlen_func

The arguments, their order, defaults and meaning, and the return values are FlashAttention-2's
(its ``flash_attn_interface.py``): tensors are (batch, seqlen, heads, head_dim), or packed
sequences (total_tokens, heads, head_dim) with int32 cumulative lengths; grouped-query and
multi-query attention follow from the head counts; causality, the sliding window and ALiBi's
distances are anchored at the **bottom-right** corner (query i sits at i + seqlen_k -
seqlen_q: causal, it sees keys j <= i + seqlen_k - seqlen_q), of each sequence when they are
packed, as FlashAttention-2 anchors them. Nothing is copied or padded: the kernel
reads the caller's tensors through their strides (:mod:`kernels.flash_attention.varlen` says
how packed sequences are read).

Where it differs from FlashAttention-2 (see also docs/kernel.md, "FA2 API"):
    * float32 is accepted as well as float16 and bfloat16 (FlashAttention-2 refuses it), and
      the tensors may have any strides (FlashAttention-2 wants the last axis contiguous).
    * ``return_attn_probs=True`` returns ``(out, softmax_lse, None)``: FlashAttention-2's third
      value, S_dmask, is a (batch, heads, seqlen_q, seqlen_k) tensor of probabilities kept for
      its tests, which this kernel never builds. To check dropout, rebuild the keep-mask with
      :func:`kernels.flash_attention.dropout_keep_mask`.
    * ``deterministic`` is accepted and changes nothing: the backward has no atomics (one
      program per key block accumulates dK, dV; one per query block dQ), so it is always
      deterministic. Dropout's random numbers follow ``torch.manual_seed``
      (:mod:`kernels.flash_attention.dropout`), not FlashAttention-2's generator.
    * Both take one keyword FlashAttention-2 does not: ``sinks``, GPT-OSS's attention sinks
      (one logit per head that joins each row's softmax denominator), as
      :func:`kernels.flash_attention.flash_attention` takes them, with their gradient.
    * ``softmax_lse`` is -inf for a row that sees no key (the log of an empty sum);
      FlashAttention-2's kernel writes +inf there. Its output, 0, is the same.
    * ``flash_attn_varlen_func`` takes ``block_table`` (FlashAttention-2's paged cache) only
      as None. The packed-projection variants (``flash_attn_qkvpacked_func``,
      ``flash_attn_kvpacked_func`` and their varlen forms) and ``flash_attn_with_kvcache``
      are not provided: pass q, k and v (views of a packed tensor are read in place).
    * Errors name the function called and FlashAttention-2's argument names
      (``softmax_scale``, ``causal``), and show shapes as the caller laid them out.
"""

import torch

from kernels.common.checks import check_flag, check_rank
from kernels.flash_attention.checks import check_inputs
from kernels.flash_attention.dropout import check_dropout_p
from kernels.flash_attention.function import forward_checked
from kernels.flash_attention.options import score_options
from kernels.flash_attention.varlen import Packed, check_packed, rows_view


def flash_attn_func(
    q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, window_size=(-1, -1),
    softcap=0.0, alibi_slopes=None, deterministic=False, return_attn_probs=False, *,
    sinks=None,
):  # fmt: skip
    """Attention over (batch, seqlen, heads, head_dim) tensors, FlashAttention-2's
    ``flash_attn_func``.

    Args:
        q: (batch, seqlen_q, heads, head_dim), float16, bfloat16 or float32.
        k: (batch, seqlen_k, heads_k, head_dim); v: (batch, seqlen_k, heads_k, head_dim_v),
            same dtype and device. heads_k divides heads: multi-query (heads_k == 1) and
            grouped-query attention, query head i reading key/value head i // (heads / heads_k).
            Head dims 1 to 256 (head_dim_v may differ from head_dim).
        dropout_p: probability of dropping each attention probability (pass 0.0 in
            evaluation, as with FlashAttention-2).
        softmax_scale: the scores' scale; default 1 / sqrt(head_dim).
        causal: causal masking anchored bottom-right: query i sees keys
            j <= i + seqlen_k - seqlen_q (a query that sees no key gets zeros).
        window_size: (left, right) sliding window, -1 for an unbounded side: query i sees key j
            iff i + seqlen_k - seqlen_q - left <= j <= i + seqlen_k - seqlen_q + right (with
            causal, right is 0). Key blocks outside the window are never visited.
        softcap: 0.0 (off) or c > 0: scores become c * tanh(scores / c) (after the scale).
        alibi_slopes: float32 (heads,) or (batch, heads): adds -slope * |i + seqlen_k -
            seqlen_q - j| to the scores; no bias tensor is built. They get no gradient: as
            FlashAttention-2 does, slopes that require one are read as constants (where
            :func:`~kernels.flash_attention.flash_attention` refuses them).
        deterministic: accepted for compatibility; the backward is always deterministic.
        return_attn_probs: also return the log-sum-exp (and None, see the module docstring).
        sinks: not FlashAttention-2's: (heads,) logits, one per query head, each joining its
            head's softmax denominators and then dropped (GPT-OSS); their gradient is returned.

    Returns:
        out (batch, seqlen_q, heads, head_dim_v) in q's dtype, laid out in q's memory order
            (contiguous when q is, as FlashAttention-2's ``empty_like(q)``); with
        ``return_attn_probs``, ``(out, softmax_lse, None)``, softmax_lse (batch, heads,
        seqlen_q) float32, the natural-log log-sum-exp of each row's scaled scores (-inf for a
        row that sees no key). Gradients flow to q, k and v (and sinks; and through softmax_lse).
    """
    name = "flash_attn_func"
    check_rank(name, 4, "(batch, seqlen, heads, head_dim)", q=q, k=k, v=v)
    _check_layout(name, q, k, v, "batch", "seqlen_k")
    # (b, n, h, d) -> (b, h, n, d): views, read by the kernel through their strides
    query, key, value = (t.transpose(1, 2) for t in (q, k, v))
    # flash_attention's checks, under this function's name and FlashAttention-2's arguments'.
    dropout_p = check_dropout_p(dropout_p, name)
    check_inputs(query, key, value, None, softmax_scale, True, caller=name,
                 scale_name="softmax_scale")  # fmt: skip
    causal, options = score_options(
        query, key, None, check_flag(causal, "causal", name), "bottom_right", window_size,
        softcap, _constant(alibi_slopes), sinks, caller=name,
    )  # fmt: skip
    out, lse = forward_checked(query, key, value, None, causal, options, softmax_scale, dropout_p)
    out = out.transpose(1, 2)  # (b, h, n, d_v) -> (b, n, h, d_v), in q's memory order
    return (out, lse, None) if return_attn_probs else out


def flash_attn_varlen_func(
    q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
    softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
    deterministic=False, return_attn_probs=False, block_table=None, *, sinks=None,
):  # fmt: skip
    """Attention over packed sequences, FlashAttention-2's ``flash_attn_varlen_func``.

    Args:
        q: (total_q, heads, head_dim): the batch's queries, sequence after sequence.
        k: (total_k, heads_k, head_dim); v: (total_k, heads_k, head_dim_v); heads_k divides
            heads (GQA/MQA). dtypes and head dims as in :func:`flash_attn_func`.
        cu_seqlens_q, cu_seqlens_k: (batch + 1,) int32 on q's device, cumulative lengths:
            sequence s is queries cu_seqlens_q[s]:cu_seqlens_q[s + 1] and keys
            cu_seqlens_k[s]:cu_seqlens_k[s + 1]; from 0, never decreasing, ending at
            total_q and total_k. A sequence may be empty. Any strides (a strided view is
            read by value: copied when it is not contiguous).
        max_seqlen_q, max_seqlen_k: ints at least the longest sequence's lengths (the grid).
        dropout_p, softmax_scale, deterministic: as in :func:`flash_attn_func`.
        causal: per sequence, anchored bottom-right: its query i sees its keys
            j <= i + seqlen_k - seqlen_q.
        window_size, softcap: as in :func:`flash_attn_func`, each sequence's window anchored
            bottom-right in it.
        alibi_slopes: float32 (heads,) or (batch, heads), one row per sequence; distances
            anchored as the window; no gradient, as in :func:`flash_attn_func`.
        return_attn_probs: also return the log-sum-exp (and None).
        block_table: FlashAttention-2's paged key/value cache: only None (no paging) is
            taken; anything else raises a ValueError.
        sinks: as in :func:`flash_attn_func` (not FlashAttention-2's), the same in every
            sequence.

    Returns:
        out (total_q, heads, head_dim_v), contiguous; with ``return_attn_probs``,
        ``(out, softmax_lse, None)``, softmax_lse (heads, total_q) float32, as
        FlashAttention-2's varlen log-sum-exp. Gradients flow to q, k and v (and sinks).

    Raises:
        TypeError / ValueError: on a bad input (a cu_seqlens that is not int32, does not start
        at 0, decreases, does not end at the total, or a max_seqlen shorter than a sequence),
        naming it, before anything is launched. The values of cu_seqlens are read to check
        them (a synchronisation on a GPU), except under torch.compile and while a CUDA graph
        is captured.
    """
    name = "flash_attn_varlen_func"
    if block_table is not None:
        raise ValueError(
            f"{name}: block_table (a paged key/value cache) is not supported; pass k and v "
            "packed, (total_k, heads_k, head_dim), with cu_seqlens_k"
        )
    check_rank(name, 3, "(total_tokens, heads, head_dim)", q=q, k=k, v=v)
    _check_layout(name, q, k, v, None, "total_k")
    check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, name)
    # The kernels read the cumulative lengths as one contiguous int32 row each.
    cu_seqlens_q, cu_seqlens_k = cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous()
    dropout_p = check_dropout_p(dropout_p, name)
    check_inputs(rows_view(q), rows_view(k), rows_view(v), None, softmax_scale, True,
                 caller=name, scale_name="softmax_scale")  # fmt: skip
    packed = Packed(cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q), int(max_seqlen_k))
    causal, options = score_options(
        packed.view(q), packed.view(k), None, check_flag(causal, "causal", name), "bottom_right",
        window_size, softcap, _constant(alibi_slopes), sinks, caller=name,
    )  # fmt: skip
    out, lse = forward_checked(q, k, v, None, causal, options, softmax_scale, dropout_p, packed)
    return (out, lse, None) if return_attn_probs else out


def _check_layout(name, q, k, v, batch, length):
    """q, k and v agree in FlashAttention-2's layout, (batch, seqlen, heads, head_dim) or
    packed (total, heads, head_dim), or an error naming ``name`` and showing the shapes as
    given (``batch``: the leading axis's name, None when packed; ``length``: k's and v's
    length axis's name). The rest (dtypes, devices, head dims' range) flash_attention checks."""
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if batch is not None and not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"{name}: q, k and v must have the same {batch} size, got {shapes}")
    if k.shape[-3] != v.shape[-3]:
        raise ValueError(
            f"{name}: k and v must have the same {length}, got k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    heads, heads_k = q.shape[-2], k.shape[-2]
    if v.shape[-2] != heads_k:
        raise ValueError(
            f"{name}: k and v must have the same number of heads, got k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if heads_k == 0 or heads % heads_k:
        raise ValueError(
            f"{name}: heads_k = {heads_k} (k's and v's heads) must divide q's heads = {heads} "
            f"(multi-query and grouped-query attention), got {shapes}"
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{name}: q and k must have the same head_dim, got q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}"
        )


def _constant(alibi_slopes):
    """FlashAttention-2 gives ALiBi slopes no gradient and takes slopes that require one."""
    return alibi_slopes.detach() if isinstance(alibi_slopes, torch.Tensor) else alibi_slopes
