"""Launch tables of the flash-attention kernels: tile shapes and configurations to tune over.

Each list is best guess first and holds what the compile gate measured to compile without
register spills on the architectures it serves; the measurements behind each entry (registers,
spilled bytes, per architecture and Triton version) are in ``docs/kernel.md``, "Why the launch
tables hold what they hold". :func:`kernels.common.tuning.candidates` prunes a list to the GPU's
shared memory and keeps at most four.
"""

import torch

from kernels.common import runtime, tuning
from kernels.common.tuning import LaunchConfig, TileShape

# What one program of each kernel keeps in shared memory (TileShape): the forward and the dQ
# pass hold a query tile (and dO) and stream key/value blocks; the dK/dV pass holds a key/value
# block and streams query/dO blocks.
TILES = {
    "fwd": TileShape(resident=1, streamed=2, resident_is_query=True),
    "dkdv": TileShape(resident=2, streamed=2, resident_is_query=False),
    "dq": TileShape(resident=2, streamed=2, resident_is_query=True),
    # the dQ pass that also writes a float mask's gradient dS (one more live (i, j) tile)
    "dq_bias": TileShape(resident=2, streamed=2, resident_is_query=True),
}

C = LaunchConfig  # (BLOCK_M query rows, BLOCK_N key rows, warps, stages)
# By (kernel, head-dim width (see _width), Hopper), for 16-bit inputs: the forward and dQ take
# FlashAttention-2's wide tiles; the dK/dV pass, which keeps two (BLOCK_N, d) tiles and two
# float32 accumulators per key block, takes narrower key blocks (wider ones spill on sm_80-89),
# and on sm_90 tiles of 64 query rows, which keep Hopper's wgmma products.
CONFIGS_16BIT = {
    ("fwd", 64, False): [C(128, 64, 8, 3), C(128, 128, 8, 3), C(64, 64, 4, 3), C(64, 32, 4, 3)],
    ("fwd", 64, True): [C(128, 64, 8, 3), C(128, 128, 8, 3), C(64, 64, 4, 3), C(64, 32, 4, 3)],
    ("fwd", 128, False): [C(128, 32, 8, 3), C(64, 64, 8, 3), C(64, 128, 8, 2), C(64, 32, 8, 2)],
    ("fwd", 128, True): [C(64, 128, 8, 3), C(128, 32, 8, 3), C(64, 64, 8, 3), C(64, 32, 4, 3)],
    ("dq", 64, False): [C(128, 32, 8, 2), C(64, 64, 4, 2), C(64, 64, 8, 2), C(64, 32, 4, 2)],
    ("dq", 64, True): [C(128, 32, 8, 2), C(64, 64, 4, 2), C(64, 64, 8, 2), C(64, 32, 4, 2)],
    ("dq", 128, False): [C(64, 64, 8, 2), C(128, 32, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dq", 128, True): [C(64, 64, 8, 2), C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 32, 4, 2)],
    ("dkdv", 64, False): [C(32, 32, 4, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dkdv", 64, True): [C(64, 64, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2), C(64, 16, 4, 1)],
    ("dkdv", 128, False): [C(32, 64, 8, 2), C(32, 32, 4, 2), C(16, 64, 4, 2), C(16, 32, 4, 2)],
    ("dkdv", 128, True): [C(32, 64, 8, 2), C(16, 64, 4, 2), C(64, 16, 4, 2), C(64, 16, 4, 1)],
}
# The dQ pass that also writes a float mask's gradient (MASK_GRAD: dS stored per tile, the mask
# read as (i, j) tiles) holds more, so narrower tiles at width 64; elsewhere the dQ tables.
CONFIGS_16BIT |= {
    ("dq_bias", 64, False): [C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2), C(32, 32, 4, 2)],
    ("dq_bias", 64, True): CONFIGS_16BIT["dq", 64, True],
    ("dq_bias", 128, False): CONFIGS_16BIT["dq", 128, False],
    ("dq_bias", 128, True): CONFIGS_16BIT["dq", 128, True],
}
# Head dims 129-256 (padded to 256; FlashAttention-2's limit): a (64, 256) float32 accumulator
# alone is 64 registers a thread with 8 warps, and a (64, 256) 16-bit tile takes 32 KiB of
# shared memory per pipeline stage, so narrower key blocks, 8 warps for 64-row tiles and two
# stages at most.
CONFIGS_16BIT |= {
    ("fwd", 256, False): [C(64, 32, 8, 2), C(64, 32, 8, 1), C(64, 16, 4, 2), C(32, 32, 4, 2)],
    ("fwd", 256, True): [C(64, 64, 8, 2), C(64, 32, 8, 2), C(64, 32, 4, 2), C(64, 16, 4, 2)],
    ("dq", 256, False): [C(64, 32, 8, 2), C(64, 16, 8, 2), C(32, 32, 4, 2), C(32, 16, 4, 2)],
    ("dq", 256, True): [C(64, 32, 8, 2), C(64, 16, 8, 2), C(64, 32, 4, 2), C(64, 16, 4, 2)],
    ("dkdv", 256, False): [C(16, 16, 4, 2), C(16, 32, 4, 2), C(32, 32, 8, 2), C(32, 16, 4, 2)],
    ("dkdv", 256, True): [C(32, 64, 8, 1), C(16, 64, 8, 1), C(64, 16, 4, 1)],
}
CONFIGS_16BIT["dq_bias", 256, False] = CONFIGS_16BIT["dq", 256, False]
CONFIGS_16BIT["dq_bias", 256, True] = CONFIGS_16BIT["dq", 256, True]
# With dropout every (i, j) tile also computes its Philox keep bits, which holds more registers:
# where a plain list spills with dropout, its own list. Keys missing here use CONFIGS_16BIT.
CONFIGS_DROPOUT_16BIT = {
    ("dkdv", 64, True): [C(64, 64, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2), C(64, 16, 4, 1)],
}
# A learnt float bias with dropout on sm_90. Each list keeps its plain table's first choice, which
# the other dropout calls take spill-free. The dQ pass of that call at head dims 129-256 spills in
# every config tried: a known spill (compile_gate.verdicts.known_spill), put first.
CONFIGS_DROPOUT_16BIT |= {
    ("fwd", 64, True): [C(128, 64, 8, 3), C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2)],
    ("fwd", 256, True): [C(64, 64, 8, 2), C(64, 32, 8, 2), C(64, 16, 8, 2), C(64, 16, 4, 2)],
    ("dq_bias", 64, True): [C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 8, 2), C(64, 16, 4, 2)],
    ("dq_bias", 256, True): [C(64, 16, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2)],
}
# The same dQ pass on sm_80-89: 32-row and 16-row tiles at width 128; at width 256 on sm_86/89
# (99 KB, which drops 64x32 w8 s2) tiles of 32x16 and 16x16. On sm_80 at d = 160-192 the first
# two spill; 16x32 w8 s2 is the one that spills on neither triton 3.9 nor 3.6 (16x16 w4 s2
# spills 8 B on 3.6).
CONFIGS_DROPOUT_16BIT["dq_bias", 256, False] = [
    C(64, 32, 8, 2), C(32, 16, 8, 2), C(16, 32, 8, 2), C(16, 16, 4, 2),
]  # fmt: skip
# The dK/dV pass with dropout at width 256 on sm_80-89: the plain list's first choice, then tiles
# that spill on neither triton 3.9 nor 3.6 (on sm_86 with triton 3.6 the plain 16x16 w4 s2 spills
# 16 B for d = 40 with d_v = 256 and a float bias, and the rest of the plain list 160-360 B).
CONFIGS_DROPOUT_16BIT["dkdv", 256, False] = [
    C(16, 16, 4, 2), C(16, 32, 8, 2), C(16, 16, 8, 2), C(16, 16, 4, 1),
]  # fmt: skip
CONFIGS_DROPOUT_16BIT["dq_bias", 128, False] = [
    C(32, 32, 8, 2), C(32, 32, 4, 2), C(16, 64, 4, 2), C(16, 32, 4, 2),
]  # fmt: skip
# float32 multiplies as three TF32 products (see launcher._precision) and holds twice the bytes
# per tile: small tiles only. Its backward still spills at head dims >= 64 (the gate warns):
# float32 on a GPU is for checking results, not for speed (FlashAttention has no float32 at all).
# The 16x16 tiles are what fits sm_86/89's shared memory at head dims above 128.
CONFIGS_FLOAT32 = {
    "fwd": [C(32, 32, 4, 2), C(64, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dq": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dq_bias": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dkdv": [C(16, 32, 4, 2), C(32, 32, 8, 2), C(32, 16, 4, 2), C(16, 16, 4, 2)],
}
# Head dims 129-256 in float32: the forward's 64x32 w4 s2 needs more shared memory than sm_90's
# 227 KB (more than the estimate says), so the wide forward goes without it.
CONFIGS_FLOAT32_WIDE = {"fwd": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)]}


def _width(block_d):
    """The launch tables' head-dim classes: padded head dims up to 64, 128 and 256."""
    return max(64, block_d)


def candidates_for(kernel_name, arch, block_d, dtype, dropout=False):
    """The configurations to choose from for one kernel on a GPU of compute capability ``arch``
    (with dropout, CONFIGS_DROPOUT_16BIT's where it has an entry), pruned to its shared memory;
    block_d: the wider of the two padded head dims."""
    if dtype == torch.float32:
        table = CONFIGS_FLOAT32[kernel_name]
        if block_d > 128:
            table = CONFIGS_FLOAT32_WIDE.get(kernel_name, table)
    else:
        key = (kernel_name, _width(block_d), arch >= 90)
        table = CONFIGS_16BIT[key]
        if dropout:
            table = CONFIGS_DROPOUT_16BIT.get(key, table)
    return tuning.candidates(TILES[kernel_name], table, arch, block_d, dtype)


def for_kernel(kernel_name, q, block_d, dropout=False):
    """The configurations to choose from for one kernel on q's device (one under the
    interpreter)."""
    if runtime.INTERPRETED:
        return [tuning.INTERPRETER_CONFIG]
    return candidates_for(kernel_name, runtime.capability(q.device), block_d, q.dtype, dropout)
