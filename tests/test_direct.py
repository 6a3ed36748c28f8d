"""The hand-written MLP step (densa.training.direct) against autograd, which it replaces in the loop.

Oracle: the model's own forward under autocast (as the loop ran it) + F.cross_entropy + backward gives
the gradients; the direct step must give the same bits, and whole runs with it must end with the same
weights and print the same epochs as runs that go through autograd.
"""

import contextlib
import importlib

import pytest
import torch
import torch.nn.functional as F

import densa
from densa.core.data import load_dataset
from densa.core.device import cpu_bf16_is_fast
from densa.core.models import CNN, MLP
from densa.training.direct import DirectStep, direct_step
from densa.training.distributed import LocalGroup

loop = importlib.import_module("densa.training.loop")
needs_bf16 = pytest.mark.skipif(not cpu_bf16_is_fast(), reason="densa trains in bf16 only on native bf16")


def autograd_step(model, x, y, bf16: bool, smoothing: float):
    """What the loop does without the direct step: loss, logits and each parameter's gradient."""
    model.zero_grad(set_to_none=True)  # the direct step leaves its gradients in .grad
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with cast:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return loss.detach(), logits.detach(), grads


def batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).float() / 255
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "silu"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_same_loss_logits_and_gradients_as_autograd(activation, bf16, smoothing):
    torch.manual_seed(0)
    normalize = (0.1307, 0.3081) if activation == "relu" else None
    model = MLP([784, 48, 24, 10], activation, normalize=normalize)
    step = direct_step(model, LocalGroup(), bf16, smoothing)
    assert isinstance(step, DirectStep)
    for n, seed in ((37, 1), (128, 2), (37, 3)):  # partial, full, then the partial buffers reused
        x, y = batch(n, seed)
        loss, logits, grads = autograd_step(model, x, y, bf16, smoothing)
        got_loss, got_logits = step(x, y)
        assert torch.equal(got_loss, loss) and got_loss.dtype == torch.float32
        assert torch.equal(got_logits, logits)  # bf16 logits under bf16, as autocast leaves them
        for p, want in zip(model.parameters(), grads):
            assert p.grad.dtype == p.dtype == torch.float32
            assert torch.equal(p.grad, want), (n, p.shape)


def test_a_network_without_hidden_layers():
    model = MLP([784, 10])
    x, y = batch(19, 4)
    loss, _, grads = autograd_step(model, x, y, False, 0.0)
    assert torch.equal(direct_step(model, LocalGroup(), False, 0.0)(x, y)[0], loss)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def run(model_seed: int, direct: bool, monkeypatch, **config):
    """Two epochs of the synthetic set (1000 images: the last batch has 104); (history, weights, calls)."""
    ds = load_dataset("synth")
    calls = []
    with monkeypatch.context() as m:
        if direct:
            real = DirectStep.__call__
            m.setattr(DirectStep, "__call__", lambda self, x, y: calls.append(len(x)) or real(self, x, y))
        else:
            m.setattr(loop, "direct_step", lambda *args: None)
        torch.manual_seed(model_seed)
        model = densa.MLP([784, 64, 10])
        history = densa.train(model, ds.train_images, ds.train_labels, epochs=2, **config)
    return [(r["loss"], r["acc"]) for r in history], list(model.state_dict().values()), calls


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"label_smoothing": 0.1, "optimizer": "sgd", "momentum": 0.9, "lr": 0.05},
        {"optimizer": "adamw", "weight_decay": 0.01, "schedule": "onecycle", "shift": 2},
        pytest.param({"precision": "bf16"}, marks=needs_bf16),
        pytest.param({"precision": "bf16", "label_smoothing": 0.1}, marks=needs_bf16),
    ],
    ids=["adam", "sgd-smoothing", "adamw-onecycle-shift", "bf16", "bf16-smoothing"],
)
def test_runs_end_with_the_weights_of_the_autograd_loop(synth, monkeypatch, config):
    history, weights, calls = run(0, True, monkeypatch, **config)
    assert calls[:9] == [128] * 7 + [104, 128] and len(calls) == 16  # it did take the direct path
    want_history, want_weights, _ = run(0, False, monkeypatch, **config)
    assert history == want_history
    assert all(torch.equal(a, b) for a, b in zip(weights, want_weights))


def test_a_non_finite_loss_is_named_and_never_applied_as_with_autograd(synth, monkeypatch):
    real = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda s, t, c: real(s, t, c) if s != 10 else float("inf"))
    outcomes = []
    for direct in (True, False):
        with pytest.raises(loop.NonFiniteLoss) as e:
            run(0, direct, monkeypatch)
        outcomes.append(str(e.value))
    assert outcomes[0] == outcomes[1] and "epoch 2, step 4 of 8" in outcomes[0]


class Two:
    world = 2


def test_only_plain_mlps_in_one_process_take_it():
    assert direct_step(MLP([784, 32, 10]), LocalGroup(), False, 0.0) is not None
    assert direct_step(MLP([784, 32, 10], dropout=0.1), LocalGroup(), False, 0.0) is None
    assert direct_step(CNN(), LocalGroup(), False, 0.0) is None
    assert direct_step(MLP([784, 32, 10]), Two(), False, 0.0) is None  # data-parallel: DDP's own backward
    hooked = MLP([784, 32, 10])
    hooked.net[0].register_forward_hook(lambda *args: None)
    assert direct_step(hooked, LocalGroup(), False, 0.0) is None
    frozen = MLP([784, 32, 10])
    frozen.net[0].weight.requires_grad_(False)
    assert direct_step(frozen, LocalGroup(), False, 0.0) is None
    assert direct_step(MLP([784, 32, 10]).to("meta"), LocalGroup(), False, 0.0) is None  # CPUs only
    patched = MLP([784, 32, 10])
    patched.forward = lambda x: x
    assert direct_step(patched, LocalGroup(), False, 0.0) is None

    class Wider(MLP):
        pass

    assert direct_step(Wider([784, 32, 10]), LocalGroup(), False, 0.0) is None
