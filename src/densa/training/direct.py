"""A plain MLP's training step without autograd: forward, loss, and each parameter's gradient by hand.

The loop uses it instead of `loss.backward()` when the model is an MLP (Linear layers and an
activation, no dropout, no hooks) trained in one process on a CPU. It calls the ATen ops autograd
would run for that graph, in the same order and dtypes (under bf16 autocast: weights and inputs cast
to bf16, products in bf16, gradients cast back to float32), so the gradients and the loss are the same
bits; what it saves is autograd's graph, the per-step allocation of every large tensor and, in bf16,
the page faults those fresh tensors cost. With label smoothing the loss's own gradient (logits only)
still comes from autograd, which keeps cross_entropy's exact semantics for a (batch, classes) graph.
tests/test_direct.py checks all of it against autograd.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ACTIVATIONS
from ..core.models import MLP


# activation name -> (forward, backward(grad, pre-activation, post-activation)), autograd's own formulas
def _relu_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.threshold_backward.grad_input(g, a, 0, grad_input=g)  # in place into g


ACTS = {
    "relu": (torch.relu_, _relu_backward),  # in place: its backward needs only the output
    "tanh": (torch.tanh, lambda g, z, a: torch.ops.aten.tanh_backward(g, a)),
    "gelu": (F.gelu, lambda g, z, a: torch.ops.aten.gelu_backward(g, z)),
    "silu": (F.silu, lambda g, z, a: torch.ops.aten.silu_backward(g, z)),
}


def direct_step(model: nn.Module, ranks, bf16: bool, label_smoothing: float) -> DirectStep | None:
    """A DirectStep for `model` when it is a plain MLP trained in one process on a CPU, else None."""
    if type(model) is not MLP or ranks.world > 1 or model.config is None:
        return None
    act = model.config.activation
    layers = (nn.Linear, getattr(nn, ACTIVATIONS[act]))
    if act not in ACTS or any(type(m) not in layers for m in model.net):
        return None  # dropout, or anything else autograd would have to handle
    if any(_hooked(m) or "forward" in vars(m) for m in model.modules()) or _global_hooks():
        return None  # someone watches or replaces a forward: it has to run
    params = list(model.parameters())
    if any(not p.requires_grad or p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
        return None  # checked against autograd on CPUs only
    return DirectStep(model, ACTS[act], bf16, label_smoothing)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module

    return bool(module._global_forward_hooks or module._global_forward_pre_hooks)


class DirectStep:
    """`step(x, y)`: the loss (0-d float32) and logits of images `x` (B, 784) in [0, 1] and labels `y`,
    with each parameter's `.grad` set to the gradient of the mean loss. The logits and the gradients
    are buffers that the next call overwrites.

    Every large tensor of a step (activations, their gradients, the bf16 copies of the weights, the
    gradients themselves) lives in a buffer made at the first step of each batch size and written in
    place after that: fresh, the bf16 copy of the first layer's weights took ~0.7 ms a step here
    (page faults) against ~0.1 ms into a buffer.
    """

    def __init__(self, model: MLP, act, bf16: bool, label_smoothing: float):
        self.linears = [m for m in model.net if isinstance(m, nn.Linear)]
        self.normalize = model.normalize
        self.act, self.act_backward = act
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.smoothing = label_smoothing
        device = self.linears[0].weight.device
        self.autocast = torch.autocast(device.type, dtype=self.dtype) if bf16 else contextlib.nullcontext()
        self.one = torch.ones((), device=device)  # d loss / d loss, autograd's seed
        self.grads = [(torch.empty_like(m.weight), torch.empty_like(m.bias)) for m in self.linears]
        self.buffers: dict[int, dict] = {}  # batch size -> that size's activation buffers
        if bf16:  # the products' copies of the weights and their gradients, in bf16
            self.low = [(_like(m.weight, self.dtype), _like(m.bias, self.dtype)) for m in self.linears]
            self.low_grads = [(_like(m.weight, self.dtype), _like(m.bias, self.dtype)) for m in self.linears]

    def batch_buffers(self, n: int, device) -> dict:
        if n not in self.buffers:
            widths = [m.out_features for m in self.linears]
            empty = lambda w: torch.empty(n, w, dtype=self.dtype, device=device)  # noqa: E731
            self.buffers[n] = {
                "x": empty(self.linears[0].in_features),
                "z": [empty(w) for w in widths],  # each layer's output (pre-activation)
                "g": [empty(w) for w in widths[:-1]],  # d loss / d each hidden layer's output
            }
        return self.buffers[n]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.flatten(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        buf = self.batch_buffers(len(x), x.device)
        weights = [(m.weight, m.bias) for m in self.linears]
        if self.dtype != torch.float32:  # what autocast does: inputs and weights cast to bf16
            x = buf["x"].copy_(x)
            for (w, b), (wl, bl) in zip(weights, self.low):
                wl.copy_(w), bl.copy_(b)
            weights = self.low
        inputs = [x]  # what each layer saw
        for i, (w, b) in enumerate(weights[:-1]):
            z = torch.addmm(b, inputs[-1], w.t(), out=buf["z"][i])
            inputs.append(self.act(z))  # relu overwrites z: its backward reads only the output
        w, b = weights[-1]
        logits = torch.addmm(b, inputs[-1], w.t(), out=buf["z"][-1])
        loss, g = self.loss(logits, y)
        self.backward(g, inputs, weights, buf)
        return loss, logits

    def backward(self, g, inputs, weights, buf) -> None:
        """Each layer's weight and bias gradients from g = d loss / d logits, last layer first."""
        grads = self.low_grads if self.dtype != torch.float32 else self.grads
        for i in range(len(weights) - 1, -1, -1):
            (dw, db), (w, _) = grads[i], weights[i]
            torch.mm(g.t(), inputs[i], out=dw)
            torch.sum(g, 0, out=db)
            if i:
                g = torch.mm(g, w, out=buf["g"][i - 1])
                g = self.act_backward(g, buf["z"][i - 1], inputs[i])
        for m, (dw, db), (low_w, low_b) in zip(self.linears, self.grads, grads):
            if low_w is not dw:  # bf16 gradients cast back to the weights' float32, as autograd does
                dw.copy_(low_w), db.copy_(low_b)
            m.weight.grad, m.bias.grad = dw, db

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cross_entropy (in float32, as autocast runs it) and its gradient with respect to the logits."""
        if self.smoothing:  # autograd on the logits alone: smoothing's graph is long to retrace by hand
            logits = logits.detach().requires_grad_()
            with torch.enable_grad(), self.autocast:
                loss = F.cross_entropy(logits, y, label_smoothing=self.smoothing)
            (g,) = torch.autograd.grad(loss, logits)
            return loss.detach(), g
        # cross_entropy = log_softmax + nll_loss (mean); backward: nll_loss's, then log_softmax's
        logp = torch._log_softmax(logits.float(), 1, False)
        loss, total = torch.ops.aten.nll_loss_forward(logp, y, None, 1, -100)
        g = torch.ops.aten.nll_loss_backward(self.one, logp, y, None, 1, -100, total)
        g = torch._log_softmax_backward_data(g, logp, 1, torch.float32)
        return loss, g.to(logits.dtype)


def _like(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(t.shape, dtype=dtype, device=t.device)
