"""Adam, AdamW and SGD for the training loop, without torch.optim.

Constructing any torch.optim optimiser imports torch._dynamo, over a second of every run's start-up spent
on a compiler the loop never uses. These call the same fused ATen kernels that torch.optim runs with
fused=True, so each update is the same numbers bit for bit, and keep their state in torch.optim's
state_dict layout, so a checkpoint written by either resumes with either. `step(lr, skip)` takes the
step's learning rate and `skip`, a 0-d float32 tensor on the parameters' device: 1.0 leaves parameters
and state exactly as they were. The kernel reads it itself, so a bad step is dropped without a host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.config import TrainConfig
from ..core.errors import DensaError


class Optimizer:
    """What the loop needs of an optimiser: step(lr, skip), zero_grad(), state_dict(), load_state_dict()."""

    def __init__(self, params, hyper: dict, slots: tuple[str, ...]):
        self.params = list(params)
        self.hyper = hyper  # torch.optim's param_group fields, the "lr" excepted (the loop passes it)
        self.slots = slots  # per-parameter state tensors, in torch.optim's names
        self.state = [{name: self.new_slot(name, p) for name in slots} for p in self.params]
        self.lr = 0.0  # of the last step; saved with the state as torch.optim does

    def new_slot(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if name == "step":  # fused kernels keep the step count as a float32 scalar beside the weights
            return torch.zeros((), dtype=torch.float32, device=p.device)
        return torch.zeros_like(p, memory_format=torch.preserve_format)

    def live(self, *slots: str) -> list[list[torch.Tensor]]:
        """[params, grads, *slot lists] of the parameters with a gradient (torch.optim skips the rest)."""
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        lists = [[self.params[i] for i in have], [self.params[i].grad for i in have]]
        return lists + [[self.state[i][name] for i in have] for name in slots]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """torch.optim's layout: {"state": {i: {slot: tensor}}, "param_groups": [{..., "params": [i...]}]}."""
        return {
            "state": {i: dict(s) for i, s in enumerate(self.state)},
            "param_groups": [{"lr": self.lr, **self.hyper, "params": list(range(len(self.params)))}],
        }

    def load_state_dict(self, state: dict) -> None:
        """Copy a saved state (from this class or torch.optim's same optimiser) into this one's tensors."""
        saved = state["state"]
        for i, mine in enumerate(self.state):
            for name, t in mine.items():
                value = saved.get(i, {}).get(name)
                if value is None:  # torch.optim creates its state at a parameter's first step
                    continue
                value = torch.as_tensor(value)
                if value.shape != t.shape:
                    shape, want = list(value.shape), list(t.shape)
                    raise DensaError(f"optimizer.state.{i}.{name} has shape {shape}, not {want}")
                t.copy_(value)


class Adam(Optimizer):
    """torch.optim.Adam, or AdamW with decoupled=True (weight decay applied to the weights, not the grads)."""

    def __init__(self, params, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8, decoupled=False):
        hyper = {
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": True,
            "decoupled_weight_decay": decoupled,
        }
        super().__init__(params, hyper, ("step", "exp_avg", "exp_avg_sq"))
        self.kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_

    def step(self, lr: float, skip: torch.Tensor | None = None) -> None:
        self.lr = lr
        params, grads, steps, exp_avg, exp_avg_sq = self.live(*self.slots)
        torch._foreach_add_(steps, 1)
        beta1, beta2 = self.hyper["betas"]
        self.kernel(
            params, grads, exp_avg, exp_avg_sq, [], steps,
            lr=lr, beta1=beta1, beta2=beta2, weight_decay=self.hyper["weight_decay"],
            eps=self.hyper["eps"], amsgrad=False, maximize=False, found_inf=skip,
        )  # fmt: skip
        if skip is not None:
            torch._foreach_add_(steps, skip, alpha=-1)  # a skipped step is not counted


class SGD(Optimizer):
    """torch.optim.SGD with momentum (optionally Nesterov) and L2 weight decay; no dampening.

    The momentum buffers start at zero rather than at the first gradient (torch.optim's way): with no
    dampening the first update is momentum * 0 + grad = grad either way, exactly.
    """

    def __init__(self, params, momentum=0.0, nesterov=False, weight_decay=0.0):
        hyper = {
            "momentum": momentum,
            "dampening": 0.0,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": False,
            "foreach": None,
            "differentiable": False,
            "fused": True,
        }
        super().__init__(params, hyper, ("momentum_buffer",) if momentum else ())

    def step(self, lr: float, skip: torch.Tensor | None = None) -> None:
        self.lr = lr
        params, grads, *buffers = self.live(*self.slots)
        torch._fused_sgd_(
            params, grads, buffers[0] if buffers else [],
            weight_decay=self.hyper["weight_decay"], momentum=self.hyper["momentum"], lr=lr,
            dampening=0.0, nesterov=self.hyper["nesterov"], maximize=False, is_first_step=False,
            found_inf=skip,
        )  # fmt: skip


def make_optimizer(model: nn.Module, config: TrainConfig) -> Optimizer:
    """The optimiser `config` names over all of `model`'s parameters (one group, fused kernels)."""
    params = list(model.parameters())
    if config.optimizer == "sgd":
        return SGD(params, config.momentum, config.nesterov, config.weight_decay)
    return Adam(params, config.weight_decay, decoupled=config.optimizer == "adamw")
