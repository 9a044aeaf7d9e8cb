"""Optimizers over peftc Parameters: AdamW and SGD with torch.optim's math, plus gradient clipping.

Parameters whose ``grad`` is None (frozen, or never reached by a backward pass) are skipped.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from . import functional as F
from .nn.module import Parameter


class Optimizer:
    """Base class holding param groups (dicts with "params" and hyper-parameters) and per-parameter state."""

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], defaults: dict) -> None:
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = []
        for group in groups:
            g = {**defaults, **group, "params": list(group["params"])}
            for p in g["params"]:
                if not isinstance(p, Parameter):
                    raise TypeError(f"optimizer params must be peftc.nn.Parameter, got {type(p).__name__}")
            self.param_groups.append(g)
        self.state: dict[int, dict] = {}

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.fill(0.0)

    def _param_state(self, p: Parameter) -> dict:
        return self.state.setdefault(id(p), {"step": 0})

    def state_dict(self) -> dict:
        """Per-parameter state in parameter order, plus the hyper-parameters of each group."""
        order = [p for g in self.param_groups for p in g["params"]]
        return {
            "state": [
                {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.state.get(id(p), {}).items()}
                for p in order
            ],
            "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups],
        }

    def load_state_dict(self, state: dict) -> None:
        order = [p for g in self.param_groups for p in g["params"]]
        if len(state["state"]) != len(order) or len(state["param_groups"]) != len(self.param_groups):
            raise ValueError("optimizer state does not match this optimizer's parameters")
        self.state = {id(p): {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in s.items()}
                      for p, s in zip(order, state["state"]) if s}
        for g, saved in zip(self.param_groups, state["param_groups"]):
            g.update(saved)


class AdamW(Optimizer):
    """torch.optim.AdamW: decoupled weight decay, bias-corrected moments."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2) -> None:
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_decay < 0:
            raise ValueError(f"AdamW: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def step(self) -> None:
        for g in self.param_groups:
            beta1, beta2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self._param_state(p)
                if "m" not in s:
                    s["m"] = np.zeros_like(p.data)
                    s["v"] = np.zeros_like(p.data)
                s["step"] += 1
                F.adamw_step(p.data, s["m"], s["v"], p.grad, g["lr"], beta1, beta2, g["eps"], g["weight_decay"],
                             s["step"])


class SGD(Optimizer):
    """torch.optim.SGD: momentum (buffer starts as the first gradient), dampening, nesterov, weight decay."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: invalid lr={lr}, momentum={momentum} or weight_decay={weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def step(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                s = self._param_state(p)
                if g["momentum"] != 0.0 and "momentum_buffer" not in s:
                    s["momentum_buffer"] = np.zeros_like(p.data)
                s["step"] += 1
                F.sgd_step(p.data, s.get("momentum_buffer"), p.grad, g["lr"], g["momentum"], g["dampening"],
                           g["weight_decay"], g["nesterov"], s["step"])


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; return the norm before."""
    grads = [p.grad for p in params if p.grad is not None]
    total = float(np.sqrt(sum(F.sumsq(g) for g in grads)))
    if not np.isfinite(total):
        raise FloatingPointError(f"clip_grad_norm_: gradient norm is {total}")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            F.scale_(g, coef)
    return total
