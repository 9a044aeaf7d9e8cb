"""Learning-rate schedules that set ``lr`` in an optimizer's param groups, step by step.

:class:`LinearWarmupSchedule` is transformers' ``get_linear_schedule_with_warmup`` (a torch
``LambdaLR``): the rate rises linearly from 0 over the warm-up steps, then falls linearly to 0 at
``num_training_steps``. As there, the factor for step 0 is applied at construction and
``step()`` is called after each ``optimizer.step()``.
"""
from __future__ import annotations

from .optim import Optimizer


def linear_warmup_factor(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """The multiplier of the base rate at ``step``."""
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


class LinearWarmupSchedule:
    """lr = base_lr * :func:`linear_warmup_factor` (step), base_lr being each group's lr at construction."""

    def __init__(self, optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int) -> None:
        if num_warmup_steps < 0 or num_training_steps < 0:
            raise ValueError(f"steps must be >= 0, got num_warmup_steps={num_warmup_steps}, "
                             f"num_training_steps={num_training_steps}")
        self.optimizer = optimizer
        self.num_warmup_steps = int(num_warmup_steps)
        self.num_training_steps = int(num_training_steps)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.last_step = 0
        self._apply()

    def factor(self) -> float:
        return linear_warmup_factor(self.last_step, self.num_warmup_steps, self.num_training_steps)

    def _apply(self) -> None:
        f = self.factor()
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        """Advance one optimizer step and set the new rates."""
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step, "base_lrs": list(self.base_lrs),
                "num_warmup_steps": self.num_warmup_steps, "num_training_steps": self.num_training_steps}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.num_warmup_steps = int(state["num_warmup_steps"])
        self.num_training_steps = int(state["num_training_steps"])
        self._apply()
