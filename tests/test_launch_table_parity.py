"""Every configuration of the launch tables computes the right answer on a GPU.

The interpreter ignores warps and stages, and a GPU run takes whatever configuration autotuning
picks, so each entry of the 16-bit tables (``kernels/*/configs.py``: every (kernel pass, head-dim
width) list, Hopper's and the others', with dropout's) is forced in turn -- the tuning choice
(``kernels.common.tuning.pick``) returns it for its pass, the other passes take their first choice --
and the call is checked against the float64 reference with the criterion of
``tests/flash_reference.py``: bfloat16, one head dim per width class of the flash tables (64,
128, 256; the additive tables have no width class: 64 and 128), each masking the pass runs
with.
A config over the GPU's shared memory (one the launcher drops there) is skipped.

About 400 calls, each compiling a specialisation of its own: ``cuda`` and ``slow`` (on a GPU,
``python -m pytest -m "cuda and slow" tests/test_launch_table_parity.py``).
"""

import importlib

import pytest
import torch
from additive_reference import assert_close_as_flash_attention_does as assert_additive_close
from additive_reference import random_inputs as additive_inputs
from flash_reference import (
    assert_close_as_flash_attention_does,
    random_inputs,
    random_key_mask,
    random_mask,
)
from test_flash_dropout import assert_dropout_within_2x_naive_error

from kernels.common import runtime, tuning

fa_configs = importlib.import_module("kernels.flash_attention.configs")
aa_configs = importlib.import_module("kernels.additive_attention.configs")

FLASH_HEAD_DIMS = (64, 128, 256)  # one per width class of the flash tables (configs._width)
ADDITIVE_HEAD_DIMS = (64, 128)
FLASH_MASKINGS = ("none", "key_mask", "causal", "bool_mask", "float_bias_grad", "dropout")
ADDITIVE_MASKINGS = ("none", "key_mask", "causal")
# Two whole query tiles of 128 rows and a partial one, and a causal shift of more than a key
# block of 128: every pass runs both loop stages (whole blocks unchecked, partial or diagonal
# ones masked) with every tile shape of the tables.
LEN_Q, LEN_K = 259, 397


def passes(masking):
    """The flash passes a call with this masking launches (a float mask's gradient is written
    by the dQ pass of its own table, dq_bias)."""
    return ("fwd", "dkdv", "dq_bias" if masking == "float_bias_grad" else "dq")


def flash_table_entries(name, head_dim):
    """Every distinct 16-bit config listed for this pass at this head dim's width, in the
    tables' order: Hopper's and the others', plain and with dropout."""
    width = fa_configs._width(head_dim)
    found = []
    for table in (fa_configs.CONFIGS_16BIT, fa_configs.CONFIGS_DROPOUT_16BIT):
        for hopper in (False, True):
            found += [c for c in table.get((name, width, hopper), []) if c not in found]
    return found


def additive_table_entries(name):
    return aa_configs.CONFIGS[name, True]  # 16-bit inputs


def config_id(config):
    return f"{config.block_m}x{config.block_n}w{config.num_warps}s{config.num_stages}"


FLASH_CASES = [
    pytest.param(masking, name, d, config, id=f"{masking}-{name}-d{d}-{config_id(config)}")
    for d in FLASH_HEAD_DIMS
    for masking in FLASH_MASKINGS
    for name in passes(masking)
    for config in flash_table_entries(name, d)
]
ADDITIVE_NAMES = ("_additive_fwd", "_additive_bwd_dq", "_additive_bwd_dkdv")
ADDITIVE_CASES = [
    pytest.param(masking, name, d, config, id=f"{masking}-{name}-d{d}-{config_id(config)}")
    for d in ADDITIVE_HEAD_DIMS
    for masking in ADDITIVE_MASKINGS
    for name in ADDITIVE_NAMES
    for config in additive_table_entries(name)
]
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def force(monkeypatch, name, config, tile=None, head_dim=None):
    """tuning.pick runs ``config`` for the pass ``name`` (its key's first element) and the
    first candidate elsewhere; returns the names pick was asked for. Skips a config over this
    GPU's shared memory (tile: the pass's TileShape, for the launcher's estimate)."""
    if tile is not None:
        arch = runtime.capability(torch.device("cuda"))
        need = tile.shared_memory(config, max(64, head_dim), torch.bfloat16.itemsize)
        if need > tuning.shared_memory_limit(arch):
            pytest.skip(f"{config} needs ~{need} B of shared memory, over sm_{arch}'s")
    asked = []

    def pick(key, configs, run):
        asked.append(key[0])
        chosen = config if key[0] == name else configs[0]
        run(chosen)
        return chosen

    monkeypatch.setattr(tuning, "pick", pick)
    return asked


@pytest.mark.cuda
@pytest.mark.slow
@NEEDS_CUDA
@pytest.mark.parametrize("masking,name,head_dim,config", FLASH_CASES)
def test_every_flash_table_config_matches_the_float64_reference(
    masking, name, head_dim, config, kernel_device, monkeypatch
):
    asked = force(monkeypatch, name, config, fa_configs.TILES[name], head_dim)
    q, k, v, dout = random_inputs(2, 2, LEN_Q, LEN_K, head_dim, torch.bfloat16, seed=head_dim)
    assert q.device.type == kernel_device.type
    kwargs = {"is_causal": masking in ("causal", "dropout")}
    if masking == "key_mask":
        kwargs["attn_mask"] = random_key_mask(2, LEN_K)
    elif masking == "bool_mask":
        kwargs["attn_mask"] = random_mask((2, 2, LEN_Q, LEN_K), "bool")
    elif masking == "float_bias_grad":
        kwargs["attn_mask"] = random_mask((1, 2, LEN_Q, LEN_K), "float")
    if masking == "dropout":
        assert_dropout_within_2x_naive_error(q, k, v, dout, 0.3, **kwargs)
    else:
        assert_close_as_flash_attention_does(q, k, v, dout, **kwargs)
    assert name in asked, f"the launcher never chose a config for {name}: {asked}"


@pytest.mark.cuda
@pytest.mark.slow
@NEEDS_CUDA
@pytest.mark.parametrize("masking,name,head_dim,config", ADDITIVE_CASES)
def test_every_additive_table_config_matches_the_float64_reference(
    masking, name, head_dim, config, kernel_device, monkeypatch
):
    asked = force(monkeypatch, name, config)
    qf, kf, w, v, dout = additive_inputs(2, 2, LEN_Q, LEN_K, head_dim, head_dim, torch.bfloat16)
    assert qf.device.type == kernel_device.type
    mask = random_key_mask(2, LEN_K) if masking == "key_mask" else None
    assert_additive_close(qf, kf, w, v, dout, attn_mask=mask, is_causal=masking == "causal")
    assert name in asked, f"the launcher never chose a config for {name}: {asked}"


def test_the_sweep_covers_every_16bit_table_entry_at_every_width():
    """Every config listed for a (pass, width) is forced with every masking of its pass, at
    every width the flash tables list, and every additive one with each of its maskings."""
    widths = {
        width
        for table in (fa_configs.CONFIGS_16BIT, fa_configs.CONFIGS_DROPOUT_16BIT)
        for (_, width, _) in table
    }
    assert widths == {fa_configs._width(d) for d in FLASH_HEAD_DIMS} == set(FLASH_HEAD_DIMS)
    for name in ("fwd", "dkdv", "dq", "dq_bias"):
        for d in FLASH_HEAD_DIMS:
            listed = {
                c
                for table in (fa_configs.CONFIGS_16BIT, fa_configs.CONFIGS_DROPOUT_16BIT)
                for (pass_, width, _), configs in table.items()
                if pass_ == name and width == d
                for c in configs
            }
            maskings = [m for m in FLASH_MASKINGS if name in passes(m)]
            forced = {(p.values[0], p.values[3]) for p in FLASH_CASES if p.values[1:3] == (name, d)}
            assert forced == {(m, c) for m in maskings for c in listed}, (name, d)
    for name in ADDITIVE_NAMES:
        forced = {(p.values[0], p.values[3]) for p in ADDITIVE_CASES if p.values[1] == name}
        listed = set(aa_configs.CONFIGS[name, True])
        assert forced == {(m, c) for m in ADDITIVE_MASKINGS for c in listed}, name
