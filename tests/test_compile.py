"""torch.compile(model, fullgraph=True) equals eager, for every attention backend.

``fullgraph=True`` turns any graph break into an error, so these tests fail if the model reads
tensor values in Python or calls something the compiler cannot trace (the triton backend's
kernel is a ``torch.library`` operator, :mod:`kernels.ops`). Most use the ``aot_eager``
compiler backend: it captures the same graphs (Dynamo, AOTAutograd, the operators' fake
implementations) without Inductor's code generation, which takes ~20 s per graph on two CPU
cores; one test runs Inductor itself. Without CUDA the kernel runs under the interpreter.

Every test run compiles one training step of the triton backend (the kernel's operator inside
a graph); the other cases run under the slow marker.
"""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

from transformer.config import ModelConfig
from transformer.layers import DecoderCache
from transformer.model import Transformer, mark_dynamic_batch

BACKENDS = ("naive", "sdpa", "triton")
SLOW = pytest.mark.slow  # the long sweeps: python -m pytest -m slow
VOCAB, PAD = 50, 0
# Compiled and eager float32 differ by reordered sums only (Inductor fuses and reorders).
ATOL, RTOL = 1e-5, 1e-4


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_model(backend: str, device: torch.device | str = "cpu") -> Transformer:
    config = ModelConfig(
        VOCAB, VOCAB, d_model=32, heads=2, encoder_layers=1, decoder_layers=1, d_ff=64,
        dropout=0.0, backend=backend,
    )  # fmt: skip
    torch.manual_seed(0)
    return Transformer(config).to(device)


def batch(size: int, src_len: int, tgt_len: int, seed: int = 0, device="cpu"):
    """Source and target-in tokens, the source right-padded in its second row."""
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(3, VOCAB, (size, src_len), generator=gen)
    src[1, src_len // 2 :] = PAD
    tgt = torch.randint(3, VOCAB, (size, tgt_len + 1), generator=gen)
    src, tgt = src.to(device), tgt.to(device)
    return src, tgt[:, :-1], tgt[:, 1:]


def loss_and_grads(model, forward, src, tgt_in, tgt_out):
    model.zero_grad(set_to_none=True)
    logits = forward(src, tgt_in)
    loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD)
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_same_step(model, compiled, data):
    got_logits, got_grads = loss_and_grads(model, compiled, *data)
    want_logits, want_grads = loss_and_grads(model, model, *data)
    torch.testing.assert_close(got_logits, want_logits, atol=ATOL, rtol=RTOL)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=ATOL, rtol=RTOL, msg=name)


@pytest.mark.parametrize(
    "backend", [pytest.param("naive", marks=SLOW), pytest.param("sdpa", marks=SLOW), "triton"]
)
def test_fullgraph_compiled_training_step_equals_eager_outputs_and_gradients(
    backend, kernel_device
):
    model = tiny_model(backend, kernel_device)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    assert_same_step(model, compiled, batch(3, 11, 9, device=kernel_device))
    assert counter.frame_count == 1


@SLOW
@pytest.mark.parametrize("backend", BACKENDS)
def test_fullgraph_compiled_cached_decoding_equals_eager_full_decoding(backend, kernel_device):
    model = tiny_model(backend, kernel_device).eval()
    counter = CompileCounterWithBackend("aot_eager")
    decode = torch.compile(model.decode, fullgraph=True, backend=counter)
    src, tgt, _ = batch(3, 11, 9, device=kernel_device)
    with torch.no_grad():
        memory, src_key_mask = model.encode(src)
        full, _ = model.decode(tgt, memory, src_key_mask)
        cache, steps = DecoderCache(), []
        for t in range(tgt.shape[1]):  # one token at a time against a growing cache
            logits, cache = decode(tgt[:, t : t + 1], memory, src_key_mask, cache)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=ATOL, rtol=RTOL)
    # the empty cache, the first cached length, then one graph for every later length
    assert counter.frame_count <= 3


@SLOW
def test_training_over_five_lengths_compiles_one_graph_when_lengths_are_marked_dynamic():
    model = tiny_model("sdpa")
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for size, src_len, tgt_len in ((2, 5, 7), (3, 9, 8), (4, 13, 16), (2, 21, 19), (3, 30, 6)):
        data = batch(size, src_len, tgt_len, seed=src_len)
        mark_dynamic_batch(*data)
        assert_same_step(model, compiled, data)
    assert counter.frame_count == 1


@SLOW
def test_inductor_compiles_the_kernel_operator_into_a_graph_equal_to_eager(kernel_device):
    """Inductor's generated code around our operator (the triton backend): a training step at
    two lengths from one dynamic graph, equal to eager within float32 tolerance."""
    model = tiny_model("triton", kernel_device)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    for size, src_len, tgt_len in ((3, 11, 9), (2, 6, 14)):
        data = batch(size, src_len, tgt_len, seed=src_len, device=kernel_device)
        mark_dynamic_batch(*data)
        assert_same_step(model, compiled, data)
    assert counter.frame_count == 1


@SLOW
def test_out_of_vocabulary_ids_are_refused_inside_the_compiled_graph():
    compiled = torch.compile(tiny_model("naive"), fullgraph=True, backend="aot_eager")
    src, tgt_in, _ = batch(2, 5, 4)
    compiled(src, tgt_in)  # in range: runs
    src[0, 0] = VOCAB
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        compiled(src, tgt_in)
