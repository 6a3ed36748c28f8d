"""densa's optimisers against torch.optim's on the same gradients, the skipped step, and no torch._dynamo.

Oracle: torch.optim.Adam/AdamW/SGD with fused=True run the same kernels (the same bits expected) and
the default for-loop/foreach versions (the same numbers up to rounding).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import densa
from densa.training import loop as train_module
from densa.training.optim import SGD, Adam, make_optimizer

HERE = Path(__file__).parent

KINDS = {
    "adam": (dict(optimizer="adam", lr=1e-3), lambda ps, f: torch.optim.Adam(ps, lr=1e-3, fused=f)),
    "adam-l2": (
        dict(optimizer="adam", lr=1e-3, weight_decay=0.1),
        lambda ps, f: torch.optim.Adam(ps, lr=1e-3, weight_decay=0.1, fused=f),
    ),
    "adamw": (
        dict(optimizer="adamw", lr=4e-3, weight_decay=0.05),
        lambda ps, f: torch.optim.AdamW(ps, lr=4e-3, weight_decay=0.05, fused=f),
    ),
    "sgd": (
        dict(optimizer="sgd", lr=0.05, momentum=0.0),
        lambda ps, f: torch.optim.SGD(ps, lr=0.05, fused=f),
    ),
    "sgd-momentum": (
        dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda ps, f: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3, fused=f),
    ),
    "sgd-nesterov": (
        dict(optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True),
        lambda ps, f: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, fused=f),
    ),
}


def _pair(kind: str, fused: bool | None):
    """Two copies of one small MLP: densa's optimiser on the first, torch.optim's on the second."""
    settings, torch_opt = KINDS[kind]
    torch.manual_seed(0)
    a = densa.MLP([784, 16, 10])
    b = densa.MLP([784, 16, 10])
    b.load_state_dict(a.state_dict())
    return a, make_optimizer(a, densa.TrainConfig(**settings)), b, torch_opt(b.parameters(), fused), settings


def _grads(step: int, model):
    g = torch.Generator().manual_seed(1000 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


def _steps(a, opt, b, ref, lr: float, steps: range):
    for k in steps:
        _grads(k, a)
        _grads(k, b)
        opt.step(lr)
        opt.zero_grad()
        ref.step()
        ref.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_bits_as_torch_fused_and_same_numbers_as_its_loop(kind):
    a, opt, b, ref, settings = _pair(kind, fused=True)
    _steps(a, opt, b, ref, settings["lr"], range(25))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    a, opt, b, ref, settings = _pair(kind, fused=None)  # torch's own maths, written out in Python
    _steps(a, opt, b, ref, settings["lr"], range(25))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd-nesterov"])
def test_state_moves_between_densa_and_torch(kind):
    """A checkpoint written with torch.optim resumes with densa's optimiser and back."""
    a, opt, b, ref, settings = _pair(kind, fused=True)
    _steps(a, opt, b, ref, settings["lr"], range(5))
    mine = make_optimizer(a, densa.TrainConfig(**settings))
    fresh_b = KINDS[kind][1](b.parameters(), True)
    mine.load_state_dict(ref.state_dict())  # torch -> densa
    fresh_b.load_state_dict(opt.state_dict())  # densa -> torch
    for k in range(5, 10):
        _grads(k, a)
        _grads(k, b)
        mine.step(settings["lr"])
        mine.zero_grad()
        fresh_b.step()
        fresh_b.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd-momentum"])
def test_a_skipped_step_changes_nothing(kind):
    a, opt, b, ref, settings = _pair(kind, fused=True)
    _steps(a, opt, b, ref, settings["lr"], range(3))
    before = {k: v.clone() for k, v in a.state_dict().items()}
    state = {i: {n: t.clone() for n, t in s.items()} for i, s in opt.state_dict()["state"].items()}
    _grads(99, a)
    for p in a.parameters():
        p.grad[0] = float("nan")
    opt.step(settings["lr"], skip=torch.tensor(1.0))
    opt.zero_grad()
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())
    for i, s in opt.state_dict()["state"].items():
        assert all(torch.equal(t, state[i][n]) for n, t in s.items())
    _steps(a, opt, b, ref, settings["lr"], range(3, 6))  # and the run goes on as if it never happened
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_only_parameters_with_a_gradient_move_and_shapes_are_checked():
    torch.manual_seed(0)
    model = densa.MLP([784, 8, 10])
    w0, b0 = model.net[0].weight.clone(), model.net[0].bias.clone()
    opt = Adam(model.parameters())
    model.net[0].weight.grad = torch.ones_like(w0)
    opt.step(0.1)
    assert not torch.equal(model.net[0].weight, w0) and torch.equal(model.net[0].bias, b0)
    assert opt.state_dict()["state"][1]["step"] == 0  # as torch.optim: no gradient, no step counted
    bad = SGD(model.parameters(), momentum=0.9).state_dict()
    bad["state"][0]["momentum_buffer"] = torch.zeros(3)
    with pytest.raises(densa.DensaError, match=r"optimizer.state.0.momentum_buffer has shape \[3\]"):
        SGD(model.parameters(), momentum=0.9).load_state_dict(bad)


def test_a_non_finite_loss_leaves_the_weights_before_it(synth, monkeypatch):
    """The loss turns nan at step 5: NonFiniteLoss names it and no step from it on reached the weights."""
    from densa.core.data import load_dataset

    ds = load_dataset("synth")
    torch.manual_seed(0)
    model = densa.MLP([784, 32, 10])
    forward, calls, seen = model.forward, [], {}

    def poisoned(x):
        calls.append(1)
        if len(calls) == 5:
            seen.update({k: v.clone() for k, v in model.state_dict().items()})
        out = forward(x)
        return out * float("nan") if len(calls) == 5 else out

    monkeypatch.setattr(model, "forward", poisoned)
    with pytest.raises(train_module.NonFiniteLoss, match=r"loss became nan in epoch 1, step 5 of 8") as e:
        densa.train(model, ds.train_images, ds.train_labels, epochs=2, optimizer="sgd", lr=0.1)
    assert e.value.epoch == 1 and len(calls) == 8  # found at the epoch's end, not after every step
    assert all(torch.equal(v, seen[k]) for k, v in model.state_dict().items())


def test_a_whole_train_run_never_imports_dynamo(tmp_path):
    """torch.optim's constructors import torch._dynamo (a second of start-up); densa's path must not."""
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(HERE)!r})
        from synthetic import register, write_dataset
        from densa.cli import main
        root, out = Path(sys.argv[1]), sys.argv[2]
        write_dataset(root, "synth")
        register(root)
        flags = ["--dataset", "synth", "--data-dir", str(root), "--epochs", "2", "--val-split", "0.2"]
        rc = main(["train", *flags, "--out", out]) or main(["train", "--resume", out, "--epochs", "3"])
        dynamo = sorted(m for m in sys.modules if m.startswith("torch._dynamo"))
        print(json.dumps({{"rc": rc, "dynamo": dynamo, "optim": "torch.optim" in sys.modules}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rc"] == 0 and "Epoch 3" in out
    assert result["dynamo"] == []
    assert result["optim"]  # `import torch` loads torch.optim; only its constructors pull in dynamo
    assert (tmp_path / "run" / "summary.json").exists()
