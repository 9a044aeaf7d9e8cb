"""The linear warm-up/decay schedule against transformers' get_linear_schedule_with_warmup."""
from __future__ import annotations

import numpy as np
import pytest

from peftc.nn import Parameter
from peftc.optim import AdamW
from peftc.schedule import LinearWarmupSchedule, linear_warmup_factor


def _optimizer(lrs: tuple[float, ...]) -> AdamW:
    return AdamW([{"params": [Parameter(np.zeros(2, dtype=np.float32))], "lr": lr} for lr in lrs])


@pytest.mark.parametrize("warmup,total", [(0, 10), (3, 10), (10, 10), (4, 0)])
def test_linear_warmup_schedule_matches_transformers(torch, warmup, total):
    transformers = pytest.importorskip("transformers")
    lrs = (1e-3, 3e-4)
    topt = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs])
    tsched = transformers.get_linear_schedule_with_warmup(topt, warmup, total)
    sched = LinearWarmupSchedule(_optimizer(lrs), warmup, total)
    for step in range(total + 3):
        expected = [g["lr"] for g in topt.param_groups]
        assert sched.get_last_lr() == expected, f"step {step}"
        topt.step()
        tsched.step()
        sched.step()


def test_linear_warmup_factor_rises_then_falls_to_zero():
    f = [linear_warmup_factor(s, 4, 12) for s in range(14)]
    assert f[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f[8] == 0.5 and f[12] == 0.0 and f[13] == 0.0


def test_schedule_state_round_trips():
    a = LinearWarmupSchedule(_optimizer((1e-2,)), 2, 8)
    for _ in range(5):
        a.step()
    opt = _optimizer((1e-2,))
    b = LinearWarmupSchedule(opt, 2, 8)
    b.load_state_dict(a.state_dict())
    assert b.get_last_lr() == a.get_last_lr() == [opt.param_groups[0]["lr"]]
    a.step()
    b.step()
    assert b.get_last_lr() == a.get_last_lr()
