"""Tests for LARS, optimizer construction and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medssl.errors import MedsslError
from medssl.train.optim import (
    LARS,
    build_optimizer,
    build_scheduler,
    param_groups_for_lars,
    scaled_lr,
    warmup_cosine,
)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)


def _tiny_with_grads() -> Tiny:
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[3.0, 4.0]]))  # norm 5
        model.fc.bias.copy_(torch.tensor([2.0]))
        model.bn.weight.copy_(torch.tensor([1.0]))
        model.bn.bias.copy_(torch.tensor([0.0]))
    model.fc.weight.grad = torch.tensor([[0.7, -0.4]])
    model.fc.bias.grad = torch.tensor([0.5])
    model.bn.weight.grad = torch.tensor([0.25])
    model.bn.bias.grad = torch.tensor([-0.5])
    return model


def test_param_groups_put_1d_params_in_excluded_group() -> None:
    model = Tiny()
    groups = param_groups_for_lars(model, weight_decay=0.1)
    assert len(groups) == 2
    decay, excluded = groups
    assert decay["lars_exclude"] is False and decay["weight_decay"] == 0.1
    assert [id(p) for p in decay["params"]] == [id(model.fc.weight)]
    assert excluded["lars_exclude"] is True and excluded["weight_decay"] == 0.0
    expected = {id(model.fc.bias), id(model.bn.weight), id(model.bn.bias)}
    assert {id(p) for p in excluded["params"]} == expected


def test_lars_step_matches_hand_computation() -> None:
    model = _tiny_with_grads()
    opt = LARS(param_groups_for_lars(model, weight_decay=0.1), lr=1.0, momentum=0.9, eta=0.1)
    opt.step()
    # weight: d = g + 0.1 * w = [0.7 + 0.3, -0.4 + 0.4] = [1, 0], ||d|| = 1;
    # trust = eta * ||w|| / ||d|| = 0.1 * 5 = 0.5; w -= lr * 0.5 * d
    torch.testing.assert_close(model.fc.weight, torch.tensor([[2.5, 4.0]]))
    # excluded: plain SGD, no weight decay, no trust ratio (that would give 2 - 0.2 = 1.8)
    torch.testing.assert_close(model.fc.bias, torch.tensor([1.5]))
    torch.testing.assert_close(model.bn.weight, torch.tensor([0.75]))
    torch.testing.assert_close(model.bn.bias, torch.tensor([0.5]))

    # second step, same gradient on the bias: momentum buffer 0.9 * 0.5 + 0.5 = 0.95
    model.fc.bias.grad = torch.tensor([0.5])
    for p in (model.fc.weight, model.bn.weight, model.bn.bias):
        p.grad = None
    opt.step()
    torch.testing.assert_close(model.fc.bias, torch.tensor([0.55]))
    torch.testing.assert_close(model.fc.weight, torch.tensor([[2.5, 4.0]]))


def test_lars_trust_ratio_is_one_for_zero_norm_weight() -> None:
    w = nn.Parameter(torch.zeros(1, 2))
    w.grad = torch.tensor([[1.0, 0.0]])
    opt = LARS([{"params": [w]}], lr=0.5, momentum=0.9, weight_decay=0.1, eta=0.001)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([[-0.5, 0.0]]))

    v = nn.Parameter(torch.tensor([[1.0, 2.0]]))
    v.grad = torch.zeros(1, 2)
    LARS([v], lr=0.5, weight_decay=0.0).step()  # zero update norm: no NaN, no move
    torch.testing.assert_close(v.detach(), torch.tensor([[1.0, 2.0]]))


def test_build_optimizer_kinds_and_decay_exclusion() -> None:
    model = Tiny()
    lars = build_optimizer("lars", model, lr=0.3, weight_decay=1e-6)
    assert isinstance(lars, LARS)
    assert isinstance(build_optimizer("SGD", model, lr=0.1, weight_decay=1e-4), torch.optim.SGD)
    for name, cls in [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)]:
        opt = build_optimizer(name, model, lr=0.1, weight_decay=0.05)
        assert isinstance(opt, cls)
        by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
        assert by_decay[0.05] == {id(model.fc.weight)}
        assert by_decay[0.0] == {id(model.fc.bias), id(model.bn.weight), id(model.bn.bias)}


def test_build_optimizer_unknown_name() -> None:
    with pytest.raises(MedsslError, match=r"unknown optimizer 'adam'.*lars, sgd, adamw"):
        build_optimizer("adam", Tiny(), lr=0.1, weight_decay=0.0)


def test_warmup_cosine_values() -> None:
    total, warmup = 100, 10
    assert warmup_cosine(0, total, warmup) == pytest.approx(0.1)
    assert warmup_cosine(4, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(9, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(10, total, warmup) == pytest.approx(1.0)
    assert warmup_cosine(55, total, warmup) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warmup) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(150, total, warmup) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine(s, total, warmup) for s in range(total + 1)]
    assert all(a <= b for a, b in zip(values[:10], values[1:11], strict=True))
    assert all(a >= b for a, b in zip(values[10:], values[11:], strict=False))
    assert warmup_cosine(0, 10, 0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        warmup_cosine(0, 10, 11)


def test_build_scheduler_drives_lr() -> None:
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5)
    assert lrs[3] == pytest.approx(2.0)
    assert lrs[4] == pytest.approx(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(MedsslError, match="warmup"):
        build_scheduler(opt, total_steps=5, warmup_steps=6)


def test_scaled_lr() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.075, 256) == pytest.approx(0.075 * 16)
    assert scaled_lr(1.0, 256, "linear") == pytest.approx(1.0)
    with pytest.raises(MedsslError, match="rule"):
        scaled_lr(0.1, 256, "cubic")
    assert math.isfinite(scaled_lr(0.1, 1))
