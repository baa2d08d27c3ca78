"""Twin Hugging Face models and their comparison, for the tests of the Hugging Face backend (not
a test module).

Tiny randomly initialised models built from configs (nothing is downloaded), put on the device
the caller passes (the ``kernel_device`` fixture's: the kernel refuses CPU tensors on a GPU
host). Registering the backend is the caller's (``huggingface.register()``).
"""

import copy

import torch

from kernels.integrations import huggingface

VOCAB = 61


def twin_models(model_class, config, device, reference="sdpa", init=None):
    """The same random weights twice, on ``device``: on our kernel and on ``reference``, in
    float32, train mode. ``init(model)``, if given, changes the first model's weights (under
    no_grad) before they are copied. Each model gets its own copy of ``config``: a model keeps
    the config it is given, and ``set_attn_implementation`` writes to it, so two models built
    from one config object would both run on the implementation set last."""
    torch.manual_seed(0)
    ours = model_class(copy.deepcopy(config))
    if init is not None:
        with torch.no_grad():
            init(ours)
    ours.set_attn_implementation(huggingface.NAME)
    twin = model_class(copy.deepcopy(config))
    twin.load_state_dict(ours.state_dict())
    twin.set_attn_implementation(reference)
    assert ours.config._attn_implementation == huggingface.NAME
    return ours.to(device), twin.to(device)


def padded_batch(lengths, device, seed=0, length=None):
    """Token ids (b, n) and a padding mask (1 = token) on ``device``, right-padded, tokens
    >= 3."""
    gen = torch.Generator().manual_seed(seed)
    n = length or max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), n), generator=gen)
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return (ids * mask).to(device), mask.to(device)


def assert_same_loss_and_gradients(ours, reference, run, atol=2e-5, rtol=1e-4):
    """run(model) -> (outputs at the positions that count, loss); both backward; the outputs
    and every parameter's gradient agree within the tolerances."""
    got, loss = run(ours)
    want, ref_loss = run(reference)
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
    loss.backward()
    ref_loss.backward()
    ref_params = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        if p.grad is None:
            assert ref_params[name].grad is None or not ref_params[name].grad.any(), name
            continue
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=atol, rtol=rtol, msg=name)
