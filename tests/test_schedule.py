import math

import pytest
import torch

from ham_bench.schedule import build_scheduler, lr_factor


def test_cosine_with_warmup_shape():
    cfg = {"name": "cosine", "warmup_epochs": 1, "min_lr_factor": 0.0}
    factors = [lr_factor(s, cfg, steps_per_epoch=10, total_steps=50) for s in range(50)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_multistep_drops_at_milestone_epochs():
    cfg = {"name": "multistep", "milestones": [2, 4], "gamma": 0.1}
    assert lr_factor(19, cfg, 10, 60) == 1.0
    assert lr_factor(20, cfg, 10, 60) == pytest.approx(0.1)
    assert lr_factor(45, cfg, 10, 60) == pytest.approx(0.01)


def test_scheduler_drives_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sched = build_scheduler(opt, {"name": "cosine", "warmup_epochs": 0}, steps_per_epoch=4, total_steps=8)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[4] == pytest.approx(0.1)


def test_unknown_schedule_names_the_key():
    with pytest.raises(ValueError, match="schedule.name must be one of"):
        lr_factor(0, {"name": "linear"}, 10, 100)
