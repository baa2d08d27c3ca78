"""FlashAttention-2 forward and backward in Triton, behind an SDPA-shaped function.

Einops legend used in comments: ``b`` batch, ``h`` heads, ``i`` query positions (``len_q``),
``j`` key positions (``len_k``), ``d`` head dim (``D`` its power-of-two padding in the kernel).

Forward: a program owns one tile of queries, keeps it on chip, and streams the keys and values
through block by block with an online softmax (a running row max ``m`` and running row sum ``l``);
the output is divided by ``l`` once at the end, and the row-wise log-sum-exp is saved. Backward
(FlashAttention-2): ``delta = rowsum(dO * O)`` in a small pass, then one pass per key block that
accumulates dK and dV, and one pass per query block that accumulates dQ. Both recompute the
probabilities from the saved log-sum-exp, so nothing of size len_q x len_k is ever stored, and
neither needs atomics.

Each loop runs in up to three stages, generalising Triton's fused-attention tutorial's two:
blocks that straddle a window's lower edge (masked), blocks that are whole and wholly visible
(under causal masking: entirely left of the diagonal), which load without bounds checks and
build no mask, then the blocks that straddle the upper edge (the causal diagonal) or run past
the end (masked). Blocks outside the window are never visited; without a lower edge the first
stage is not compiled. Launch configurations (tile
sizes, warps, pipeline stages) come per kernel, head dim and GPU architecture from the tables
in ``configs``, pruned to the architecture's shared memory and autotuned on first use
(:mod:`kernels.common.tuning`); ``python -m kernels.compile_gate`` compiles every one of them for
sm_80/86/89/90 on a machine without a GPU.

Supported
    * ``F.scaled_dot_product_attention``'s signature: q (b, h, len_q, d), k (b, h_kv, len_k,
      d) and v (b, h_kv, len_k, d_v), out (b, h, len_q, d_v); the value head dim d_v may differ
      from d (q and k are padded to BLOCK_DQK, v and out to BLOCK_DV); any strides (they are
      passed to the kernel, nothing is copied).
    * ``enable_gqa``: grouped-query attention, h_kv dividing h; query head i reads key/value
      head i // (h / h_kv), and the dK/dV pass loops over each group inside one program, so
      nothing is repeated in memory and no atomics are needed.
    * float16, bfloat16 and float32; the three tensors share one dtype and one device.
    * Any len_q and len_k >= 0, not necessarily equal or multiples of the block size.
    * Head dims 1 to 256, for q/k and for v (FlashAttention-2's limit; not only powers of two:
      the kernel pads each to the next power of two with masked loads). Launch tables by the
      wider of the two padded head dims: up to 64, 128, 256.
    * ``attn_mask`` of any shape broadcastable to (b, h, len_q, len_k), read as SDPA reads it
      (broadcast from the right: a 2-D mask is (len_q, len_k)); boolean (True = the pair
      takes part) or float (added to the scores, e.g. a relative-position bias or ALiBi; -inf
      hides a pair). The kernels read the caller's tensor tile by tile with stride 0 on the
      axes it broadcasts over: a (b, 1, 1, len_k) key mask stays one value per key, and
      nothing of size len_q x len_k is built that the caller did not pass. A float mask that
      requires grad gets its gradient dS (computed as a (b, h, len_q, len_k) float32 buffer
      in the backward, then summed over the mask's broadcast axes).
    * ``is_causal``, alone or together with ``attn_mask``, aligned **top-left** as SDPA's
      (query i sees keys j <= i), or bottom-right with ``alignment="bottom_right"`` (j <= i +
      len_k - len_q: what a decoder with a key/value cache needs; the two agree when len_q ==
      len_k). PyTorch's ``causal_upper_left`` / ``causal_lower_right`` biases
      (``torch.nn.attention.bias``) as ``attn_mask`` are read the same way, never
      materialised.
    * Score options (:mod:`kernels.flash_attention.options`), each with every other and with
      masks, dropout and GQA: ``window_size=(left, right)`` (FlashAttention-2's sliding
      window, anchored as causality; key blocks wholly outside it are never visited, only
      blocks that straddle an edge are masked), ``softcap`` (``c tanh(s / c)``, Gemma 2),
      ``alibi_slopes`` ((h,) or (b, h), no bias tensor) and ``sinks`` (a per-head logit in each
      row's denominator, GPT-OSS; its gradient is returned).
    * ``dropout_p`` in [0, 1], as SDPA applies it (on the probabilities, after the softmax's
      normalisation; p == 1 gives zeros). The keep bits are Philox numbers made inside the
      kernels (``tl.rand``) from a per-call seed and offset drawn from torch's default CPU
      generator, so ``torch.manual_seed`` makes a call reproducible; the backward regenerates
      them, and no mask is stored. ``dropout_keep_mask`` returns a call's mask (for tests; see
      :mod:`kernels.flash_attention.dropout`). With p == 0 no dropout code is compiled.
    * Gradients for q, k, v and a float mask; also through the log-sum-exp when
      ``return_lse=True`` and it takes part in the loss.
    * ``torch.compile`` (``fullgraph=True`` too): forward and backward are PyTorch operators,
      ``torch.ops.flash_transformer.flash_attention`` and ``..._backward``, registered with
      ``torch.library.custom_op`` (see :mod:`kernels.ops` for why not ``triton_op``); a compiled
      graph calls them as opaque nodes, with fake implementations giving their output shapes.
    * A query that sees no key at all (all its keys masked, by a boolean mask, -inf biases or
      causality) gets an output of zeros, zero gradients, and a log-sum-exp of -inf (as SDPA
      does in torch 2.13; older torch's math backend gave NaN there).
    * FlashAttention-2's API: ``flash_attn_func`` on (b, n, h, d) tensors and
      ``flash_attn_varlen_func`` on packed (total, h, d) sequences with int32 cumulative
      lengths, no padding: each program reads its sequence's start and length from them
      (VARLEN; :mod:`kernels.flash_attention.varlen`). See
      :mod:`kernels.flash_attention.flash_attn_interface` for where it differs from FA2.
    * Runs compiled on a CUDA GPU, or on the CPU under the Triton interpreter
      (``TRITON_INTERPRET=1`` set before triton is first imported).

Caution -- not supported
    * Head dims above 256, float64.
    * Dropout's random numbers are not SDPA's (the same seed gives another mask), and drawing
      a call's seed reads a tensor in Python: ``torch.compile(fullgraph=True)`` of a call with
      dropout_p > 0 breaks the graph there (calls without dropout draw nothing). So does a
      ``scale`` given as a tensor, read as a float: pass a Python float under fullgraph.
    * A float-mask bias below about -2.36e38 (``torch.finfo(torch.float32).min``, bf16's) is
      -inf to the kernel, whose base-2 arithmetic multiplies it by log2(e): a row of such
      biases sees no key (zeros) where SDPA averages v. A row whose every bias is huge (about
      -1e9 or below) is ill-conditioned in float32, SDPA's too, and our gradients there are
      further off than SDPA's (rebuilt from the float32 log-sum-exp). Mask with booleans or
      -inf.
    * ``kernels.flash_attention`` is this function once ``kernels`` is imported (the package
      exports it under its subpackage's name): import the rest with ``from
      kernels.flash_attention import flash_attn_func, dropout_keep_mask``.
    * float32 on a GPU multiplies as three TF32 products ("tf32x3", about float32 accuracy) in
      small tiles whose backward spills registers at head dims >= 64: correct, not fast. Use
      bfloat16 or float16 for speed.
    * GPUs before sm_80 (Ampere) are not claimed: nothing is compiled or tested for them.

Layout: ``tiles`` (jitted helpers), ``forward`` and ``backward`` (the kernels), ``configs``
(launch tables), ``checks`` (input validation), ``options`` (the score options, checked),
``dropout`` (seeds and the keep-mask for tests), ``varlen`` (packed sequences: their
description, checks and the kernels' views), ``launcher`` (the host side: buffers, arguments,
tuned launches), ``function`` (the operators and ``flash_attention``),
``flash_attn_interface`` (FlashAttention-2's API, ``flash_attn_func`` and
``flash_attn_varlen_func``, on the same operators). What it shares with
``additive_attention`` (the delta pass, allocation, tuning, the one launch function every
launch goes through) is in :mod:`kernels.common`.
"""

from kernels.flash_attention.dropout import draw_seed_offset, dropout_keep_mask
from kernels.flash_attention.flash_attn_interface import flash_attn_func, flash_attn_varlen_func
from kernels.flash_attention.function import flash_attention

__all__ = [
    "draw_seed_offset",
    "dropout_keep_mask",
    "flash_attention",
    "flash_attn_func",
    "flash_attn_varlen_func",
]
