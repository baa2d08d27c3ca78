"""Launch tables of the flash-attention kernels: tile shapes and configurations to tune over."""

import torch

from kernels import launch
from kernels.flash_attention.tiles import _INTERPRETED
from kernels.launch import LaunchConfig, TileShape

# What one program of each kernel keeps in shared memory (see kernels.launch.TileShape): the
# forward and the dQ pass hold a query tile (and dO) and stream key/value blocks; the dK/dV pass
# holds a key/value block and streams query/dO blocks.
TILES = {
    "fwd": TileShape(resident=1, streamed=2, resident_is_query=True),
    "dkdv": TileShape(resident=2, streamed=2, resident_is_query=False),
    "dq": TileShape(resident=2, streamed=2, resident_is_query=True),
    # the dQ pass that also writes a float mask's gradient dS (one more live (i, j) tile)
    "dq_bias": TileShape(resident=2, streamed=2, resident_is_query=True),
}

C = LaunchConfig  # (BLOCK_M query rows, BLOCK_N key rows, warps, stages)
# Configurations to tune over, best guess first, by (kernel, head-dim width (see _width),
# Hopper), for 16-bit inputs. Measured with the compile gate (Triton 3.9, two-stage loops): the forward and dQ take
# FlashAttention-2's wide tiles; the dK/dV pass, which keeps two (BLOCK_N, d) tiles and two
# float32 accumulators per key block, spills registers on sm_80-89 with 64-key blocks at d = 64
# and with anything wider than 32x64 at d = 128, so it keeps narrower key blocks there. Its
# 16x32 fallback on sm_80-89 is for the paths that hold more per key block (a full or float
# mask read as (i, j) tiles, the grouped-query loop): on sm_80 32x32 spilled 128 B at d = 128
# GQA, 16x32 none. On sm_90 a 16-row tile cannot use wgmma (the gate fails it), and the wider
# configs spill 8-72 B for those paths; a 64x16 tile with 4 warps keeps wgmma and, in one stage,
# spilled nothing (d=80 full mask 134 registers, d=96 float bias with gradient 184, d=128 GQA
# 3/1 192; in two stages the GQA case spilled 112 B). The forward with a full boolean mask at
# d = 80 spilled in every 16-bit config on sm_80-89 (8-152 B; 64x32 w4 s3 16 B) but 64x32 with
# 8 warps in 2 stages: none (181-185 registers on sm_80/89), so that one replaces 64x32 w4 s3
# (launch.candidates keeps 4 per kernel). Compile gate builds, Triton 3.9.
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
    ("dkdv", 64, True): [C(64, 64, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2)],
    ("dkdv", 128, False): [C(32, 64, 8, 2), C(32, 32, 4, 2), C(16, 64, 4, 2), C(16, 32, 4, 2)],
    ("dkdv", 128, True): [C(32, 64, 8, 2), C(16, 64, 4, 2), C(64, 16, 4, 2), C(64, 16, 4, 1)],
}
# The dQ pass that also writes a float mask's gradient (MASK_GRAD: dS stored per tile, the mask
# read as (i, j) tiles) holds more: at d = 40 on sm_80-89 every d <= 64 config above spilled
# (Triton 3.9: 128x32 w8 s2 8-40 B, 64x32 w4 s2 64-72 B, 64x64 88-1120 B), where 64x32 w8 s2
# (240-255 registers), 64x16 w4 s2 (231-254) and 32x32 w4 s2 (233-246) spilled nothing (Triton
# 3.6: the same three at 255, no spill). Elsewhere it takes the dQ tables.
CONFIGS_16BIT |= {
    ("dq_bias", 64, False): [C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2), C(32, 32, 4, 2)],
    ("dq_bias", 64, True): CONFIGS_16BIT["dq", 64, True],
    ("dq_bias", 128, False): CONFIGS_16BIT["dq", 128, False],
    ("dq_bias", 128, True): CONFIGS_16BIT["dq", 128, True],
}
# Head dims 129-256 (padded to 256; FlashAttention-2's limit): a (64, 256) float32
# accumulator alone is 64 registers a thread with 8 warps, and a (64, 256) 16-bit tile takes
# 32 KiB of shared memory per pipeline stage, so narrower key blocks, 8 warps for 64-row tiles
# and two stages at most; on sm_86/89 (99 KiB a block) launch.candidates drops what does not
# fit (64x32 in two stages). Compile gate, Triton 3.9, bf16 d=256 causal+key_mask and fp16
# d=192 causal+bias: forward and dQ spill-free in their first choice on sm_80/86/90. dK/dV
# (two (BLOCK_N, 256) float32 accumulators): on sm_80/86 only 16x16 w4 s2 spilled nothing in
# both (227-254 registers; 16x32 w4 s2 0-104 B, 32x32 w8 s2 32-168 B); on sm_90 every 64-row
# query block spilled (64x16 w4 s1 64-96 B, 64x64 w8 s1 ~600 B) and 32x32 is not wgmma, while
# 16x64 w8 s1 (206-220 registers) and 32x64 w8 s1 (224 for bf16; 40 B for the fp16 bias) did
# not, with wgmma.
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
# With dropout every (i, j) tile also computes its Philox keep bits, which holds more registers.
# Compile gate (first choices, Triton 3.9 and 3.6 alike): the dK/dV pass with grouped-query
# attention (3/1), bfloat16 d = 64, spilled on sm_90 in every config of its plain table (64-336
# B); 64x16 w4 in one stage spills nothing (183 registers, wgmma kept; 64x16 w4 s2 56 B, 64x32
# w4 s1 64 B, 64x16 w8 s2 88 B). (The dQ pass with a float mask's gradient and dropout, float16
# d = 64, spilled on sm_80 in every config of the plain dQ table, 32-384 B; its dq_bias table's
# 64x32 w8 s2 (255 registers) and 32x32 w4 s2 (241) spill nothing with dropout.) Keys missing
# here use CONFIGS_16BIT.
CONFIGS_DROPOUT_16BIT = {
    ("dkdv", 64, True): [C(64, 64, 8, 2), C(64, 32, 4, 2), C(64, 32, 8, 2), C(64, 16, 4, 1)],
}
# A learnt float bias (read as (i, j) tiles, its gradient dS written by the dQ pass) with dropout
# on sm_90: the full sweep (--full --first-choice, Triton 3.9) found every config of the plain
# tables spilling in the forward at d = 40 (16-1736 B) and d = 160-192 (8-480 B), and in the dQ
# pass at d = 40 (8-840 B). Spill-free there, with wgmma: forward 128x32 w8 s2 (255 registers)
# and 64x32 w8 s2 (242-245) at d = 40, 64x16 w8 s2 (247) at d = 160 and 256; dQ 64x32 w8 s2
# (225), 64x16 w8 s2 (194) and 64x16 w4 s2 (218) at d = 40. Each list keeps its plain table's
# first choice, which the other dropout calls take spill-free. The dQ pass of that call at head
# dims 129-256 spills in every config tried (wgmma or not: 16x32 w4 s2 48 B at d = 160; the
# least with wgmma, 64x16 w8 s2, 32-120 B): a known spill (compile_gate.verdicts), put first.
CONFIGS_DROPOUT_16BIT |= {
    ("fwd", 64, True): [C(128, 64, 8, 3), C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2)],
    ("fwd", 256, True): [C(64, 64, 8, 2), C(64, 32, 8, 2), C(64, 16, 8, 2), C(64, 16, 4, 2)],
    ("dq_bias", 64, True): [C(128, 32, 8, 2), C(64, 32, 8, 2), C(64, 16, 8, 2), C(64, 16, 4, 2)],
    ("dq_bias", 256, True): [C(64, 16, 8, 2), C(64, 32, 8, 2), C(64, 16, 4, 2)],
}
# The same dQ pass at width 128 on sm_80-89 spilled in every config of the plain dQ table
# (sm_80 sweep: d = 80-128 and d = 64 with d_v = 128, 8-792 B); 32-row and 16-row tiles do not
# (sm_80 and sm_86, bf16 d = 96, 128 and 64/128: 32x32 w8 s2 170-219 registers, 32x32 w4 s2
# 225-255, 16x64 w4 s2 240-255, 16x32 w4 s2 128-188).
# At width 256 on sm_86/89 (99 KB, which drops 64x32 w8 s2) the rest of the plain list spilled
# for it too (d = 160-192: 64x16 w8 s2 16 B, 32x32 w4 s2 48 B, 32x16 w4 s2 24 B); on sm_86
# 32x16 w8 s2 (198 registers) and 16x16 w4 s2 (200) spill nothing. sm_80 keeps its first choice.
CONFIGS_DROPOUT_16BIT["dq_bias", 256, False] = [
    C(64, 32, 8, 2), C(32, 16, 8, 2), C(64, 16, 8, 2), C(16, 16, 4, 2),
]  # fmt: skip
CONFIGS_DROPOUT_16BIT["dq_bias", 128, False] = [
    C(32, 32, 8, 2), C(32, 32, 4, 2), C(16, 64, 4, 2), C(16, 32, 4, 2),
]  # fmt: skip
# float32 multiplies as three TF32 products (see _precision) and holds twice the bytes per tile:
# small tiles only. Its backward still spills at head dims >= 64 (the gate reports it): float32
# on a GPU is for checking results, not for speed (FlashAttention has no float32 at all). The
# 16x16 tiles are what fits sm_86/89's shared memory at head dims above 128.
CONFIGS_FLOAT32 = {
    "fwd": [C(32, 32, 4, 2), C(64, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dq": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dq_bias": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)],
    "dkdv": [C(16, 32, 4, 2), C(32, 32, 8, 2), C(32, 16, 4, 2), C(16, 16, 4, 2)],
}
# Head dims 129-256 in float32: the forward's 64x32 w4 s2 needs 246-271 KB of shared memory on
# sm_90 (the sweep: over its 227 KB, though launch.candidates estimated 206 KB; on sm_80-89 the
# estimate already drops it), so the wide forward goes without it.
CONFIGS_FLOAT32_WIDE = {"fwd": [C(32, 32, 4, 2), C(16, 32, 4, 2), C(16, 16, 4, 2)]}


def _width(block_d):
    """The launch tables' head-dim classes: padded head dims up to 64, 128 and 256."""
    return max(64, block_d)


def for_kernel(kernel_name, q, block_d, dropout=False):
    """The launch configurations to choose from for one kernel on q's device (with dropout,
    CONFIGS_DROPOUT_16BIT's where it has an entry)."""
    if _INTERPRETED:
        return [launch.INTERPRETER_CONFIG]
    arch = launch.capability(q.device)
    if q.dtype == torch.float32:
        table = CONFIGS_FLOAT32[kernel_name]
        if block_d > 128:
            table = CONFIGS_FLOAT32_WIDE.get(kernel_name, table)
    else:
        key = (kernel_name, _width(block_d), arch >= 90)
        table = CONFIGS_16BIT[key]
        if dropout:
            table = CONFIGS_DROPOUT_16BIT.get(key, table)
    return launch.candidates(TILES[kernel_name], table, arch, block_d, q.dtype)
