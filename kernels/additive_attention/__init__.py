"""Bahdanau's additive attention, fused: forward and backward in Triton at flash-attention memory.

Einops legend used in comments: ``b`` batch, ``h`` heads, ``i`` query positions (``len_q``),
``j`` key positions (``len_k``), ``a`` the additive score's feature size, ``e`` the value head
dim (``E`` its power-of-two padding in the kernel, ``A`` that of ``a``).

The score of query i and key j is ``s_ij = sum_c w_c tanh(qf_ic + kf_jc)``, where the features
``qf = q W_q`` and ``kf = k W_k + bias`` are ordinary matmuls done outside (autograd handles
them) and ``w`` is the per-head score vector. Written naively that is a (b, h, i, j, a) tensor;
here a program keeps a (BLOCK_M, BLOCK_N) tile of scores on chip and sums the ``a`` channels into
it one at a time, so nothing of size len_q x len_k (let alone x a) is ever stored.

Forward: as in ``flash_attention``, a program owns a tile of queries, streams the keys and values
through with an online softmax, and saves the row-wise log-sum-exp. Backward (FlashAttention-2
layout, no atomics): ``delta = rowsum(dO * O)`` (the flash kernel's own pass), one pass per key
block for dV, dKf and the score vector's gradient, one pass per query block for dQf. Each
recomputes its score tiles from the features and the saved log-sum-exp. With
``dS = P * (dP - delta)`` and ``t = tanh(qf_ic + kf_jc)``:

    dQf_ic = w_c sum_j dS_ij (1 - t^2)     dKf_jc = w_c sum_i dS_ij (1 - t^2)
    dw_c = sum_ij dS_ij t                   dV = P^T dO

The tanh work is elementwise over a 3-D (i, j, a) tile, so it runs on CUDA cores, not tensor
cores: a score tile costs ``a`` passes of add, exp2, divide and multiply-add over BLOCK_M x
BLOCK_N elements (the forward once; the backward recomputes it twice per pass, once for P and
once for the feature gradients, because dS needs the whole score first). Only P V and its
gradients are ``tl.dot`` products.

Supported
    * query_features (b, h, len_q, a), key_features (b, h, len_k, a), score_weight (h, a),
      v (b, h, len_k, e); any strides (nothing is copied). Any ``a`` >= 1 (the kernel loops over
      it, keeping a (BLOCK, A) accumulator in each backward pass, so ``a`` <= 128); ``e`` from
      1 to 128.
    * float16, bfloat16 and float32. The features and v share one dtype; score_weight may be
      any of the three (e.g. a float32 parameter under autocast). Scores, softmax and all
      accumulation are float32; tanh is computed as ``1 - 2 / (1 + exp(2x))`` in float32.
    * ``attn_mask``: a boolean key mask, True = this key takes part, shaped exactly
      (b or 1, h or 1, 1, len_k), read inside the kernel one value per key.
    * ``is_causal``, alone or with ``attn_mask``, aligned bottom-right as in
      ``flash_attention``: query i sees keys j <= i + len_k - len_q.
    * Any len_q and len_k >= 0, not necessarily equal or multiples of the block size.
    * Gradients for query_features, key_features, score_weight and v through one
      PyTorch operator (kernels.ops: torch.compile sees it as one node); also through the
      log-sum-exp with ``return_lse=True``.
    * A query that sees no key gets zeros, zero gradients and a log-sum-exp of -inf.
    * Runs compiled on a CUDA GPU, or on the CPU under the Triton interpreter
      (``TRITON_INTERPRET=1`` set before triton is first imported).

Caution -- not supported
    * Full (len_q, len_k) masks, float masks, 2-D masks; dropout; a softmax scale (the score
      vector carries any scale); float64; a score vector per batch row.
    * None of ``flash_attention``'s score options: no ``window_size``, ``softcap``,
      ``alibi_slopes``, ``sinks`` or ``alignment`` (its causality is always bottom-right). The
      public function takes no such keyword, so Python refuses one ("unexpected keyword
      argument"), before anything is launched.
    * The score vector's gradient is summed on the host from per-key-block partials
      (b, h, cdiv(len_k, BLOCK_N), a), linear in len_k.
    * No GPU has timed this kernel yet (its block sizes are autotuned as the flash kernel's
      are, :mod:`kernels.common.tuning`).

Layout: ``tiles`` (the score tile and its probabilities, jitted), ``forward`` and ``backward``
(the kernels), ``configs`` (launch tables), ``checks`` (input validation and the paddings),
``launcher`` (the host side: buffers, arguments, tuned launches), ``function`` (the operators
and ``additive_attention``). What it shares with ``flash_attention`` (the delta pass, key-mask
checks, allocation, tuning and the one launch function) is in :mod:`kernels.common`.
"""

from kernels.additive_attention.function import additive_attention

__all__ = ["additive_attention"]
