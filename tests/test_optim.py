"""PaperSGD against hand-computed updates, parameter groups, and the lr schedules."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch
from torch import nn

from alexnet.config import OptimConfig, ScheduleConfig
from alexnet.errors import UserError
from alexnet.training.optim import (
    LRSchedule,
    PaperSGD,
    PlateauState,
    build_optimizer,
    milestone_scale,
    param_groups,
    plateau_step,
    set_lr,
)

# Two elements, constant gradients, momentum 0.9, weight decay 5e-4; lr 0.01 for two steps,
# then cut to 0.001 for two. Paper rule: v = 0.9 v - 5e-4 lr w - lr g ; w = w + v.
W0 = (1.0, -2.0)
GRAD = (0.5, 0.25)
LRS = (0.01, 0.01, 0.001, 0.001)
# Element 0 (w = 1, g = 0.5), worked by hand:
#  1: v = 0                - 5e-4*0.01*1.0            - 0.01*0.5  = -0.005005
#     w = 1.0 - 0.005005                                           =  0.994995
#  2: v = 0.9*-0.005005    - 5e-4*0.01*0.994995       - 0.005     = -0.009509474975
#     w = 0.994995 - 0.009509474975                                =  0.985485525025
#  3: v = 0.9*-0.009509474975 - 5e-4*0.001*0.985485525025 - 0.0005
#       = -0.0085585274775 - 0.0000004927427625125 - 0.0005       = -0.0090590202202625125
#     w = 0.985485525025 - 0.0090590202202625125                   =  0.9764265048047374875
#  4: v = 0.9*v3 - 5e-4*0.001*w3 - 0.0005
#       = -0.00815311819823626125 - 0.00000048821325240236874375 - 0.0005
#                                                                  = -0.00865360641148866361874375
#     w = 0.9764265048047374875 + v4                               =  0.96777289839324882388125625
# Element 1 (w = -2, g = 0.25):
#  1: v = 0 + 5e-4*0.01*2.0 - 0.0025                               = -0.00249
#     w                                                            = -2.00249
#  2: v = 0.9*-0.00249 + 5e-4*0.01*2.00249 - 0.0025
#       = -0.002241 + 0.00001001245 - 0.0025                       = -0.00473098755
#     w                                                            = -2.00722098755
#  3: v = 0.9*-0.00473098755 + 5e-4*0.001*2.00722098755 - 0.00025
#       = -0.004257888795 + 0.000001003610493775 - 0.00025         = -0.004506885184506225
#     w                                                            = -2.011727872734506225
#  4: v = 0.9*v3 + 5e-4*0.001*2.011727872734506225 - 0.00025
#       = -0.0040561966660556025 + 0.0000010058639363672531125 - 0.00025
#                                                                  = -0.0043051908021192352468875
#     w                                                            = -2.0160330635366254602468875
HAND_V = [
    (-0.005005, -0.00249),
    (-0.009509474975, -0.00473098755),
    (-0.0090590202202625125, -0.004506885184506225),
    (-0.00865360641148866361874375, -0.0043051908021192352468875),
]
HAND_W = [
    (0.994995, -2.00249),
    (0.985485525025, -2.00722098755),
    (0.9764265048047374875, -2.011727872734506225),
    (0.96777289839324882388125625, -2.0160330635366254602468875),
]


def _param() -> nn.Parameter:
    return nn.Parameter(torch.tensor(W0, dtype=torch.float64))


def _step(opt: torch.optim.Optimizer, p: nn.Parameter, lr: float) -> None:
    set_lr(opt, lr)
    p.grad = torch.tensor(GRAD, dtype=torch.float64)
    opt.step()


def test_paper_sgd_matches_hand_computation_across_lr_cut() -> None:
    p = _param()
    opt = PaperSGD([p], lr=0.01, momentum=0.9, weight_decay=5e-4)
    for lr, v, w in zip(LRS, HAND_V, HAND_W, strict=True):
        _step(opt, p, lr)
        assert opt.state[p]["velocity"].tolist() == pytest.approx(v, rel=1e-13, abs=0)
        assert p.detach().tolist() == pytest.approx(w, rel=1e-13, abs=0)


def test_torch_sgd_equals_paper_rule_only_while_lr_is_constant() -> None:
    """faithful-spec 4.1: torch's lr multiplies the buffer, so a cut rescales the velocity."""
    p_paper, p_torch, p_emul = _param(), _param(), _param()
    paper_opt = PaperSGD([p_paper], lr=0.01, momentum=0.9, weight_decay=5e-4)
    torch_opt = torch.optim.SGD([p_torch], lr=0.01, momentum=0.9, weight_decay=5e-4)
    emul_opt = torch.optim.SGD([p_emul], lr=0.01, momentum=0.9, weight_decay=5e-4)
    for lr in LRS[:2]:
        for opt, p in ((paper_opt, p_paper), (torch_opt, p_torch), (emul_opt, p_emul)):
            _step(opt, p, lr)
        torch.testing.assert_close(p_torch, p_paper, rtol=1e-14, atol=0)
        # While lr is constant the paper's velocity is -lr times torch's buffer.
        buf = torch_opt.state[p_torch]["momentum_buffer"]
        velocity = paper_opt.state[p_paper]["velocity"]
        torch.testing.assert_close(velocity, -lr * buf, rtol=1e-14, atol=0)
    v2 = torch.tensor(HAND_V[1], dtype=torch.float64)
    w2 = p_torch.detach().clone()
    # The cut: torch's step 3 uses 0.9 * (0.001 / 0.01) * v2 of the old velocity; the paper's
    # uses 0.9 * v2. So torch lands 0.9 * v2 * (1 - 0.1) = 0.81 * v2 behind (v2 < 0: above).
    _step(paper_opt, p_paper, LRS[2])
    _step(torch_opt, p_torch, LRS[2])
    torch.testing.assert_close(p_torch - p_paper, -0.81 * v2, rtol=1e-9, atol=0)
    assert (p_torch - w2).abs().lt((p_paper - w2).abs()).all()  # torch moves less after the cut
    # Exact emulation in torch: multiply the buffer by lr_old / lr_new at the cut.
    emul_opt.state[p_emul]["momentum_buffer"].mul_(LRS[1] / LRS[2])
    _step(emul_opt, p_emul, LRS[2])
    torch.testing.assert_close(p_emul, p_paper, rtol=1e-13, atol=0)
    _step(paper_opt, p_paper, LRS[3])
    _step(emul_opt, p_emul, LRS[3])
    torch.testing.assert_close(p_emul, p_paper, rtol=1e-13, atol=0)
    assert p_paper.tolist() == pytest.approx(HAND_W[3], rel=1e-13, abs=0)


def test_paper_sgd_mixed_dtypes_skips_params_without_grad_and_returns_closure() -> None:
    a = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    c = nn.Parameter(torch.tensor([4.0]))
    opt = PaperSGD([a, b, c], lr=0.1, momentum=0.5, weight_decay=0.01)
    for _ in range(2):
        a.grad, b.grad = torch.ones(2), torch.full((1,), 2.0, dtype=torch.float64)
        assert opt.step(lambda: 7.0) == 7.0

    # Per element: v1 = -0.001 w0 - 0.1 g ; w1 = w0 + v1 ; v2 = 0.5 v1 - 0.001 w1 - 0.1 g.
    def two_steps(w0: float, g: float) -> float:
        v1 = -0.001 * w0 - 0.1 * g
        w1 = w0 + v1
        return w1 + 0.5 * v1 - 0.001 * w1 - 0.1 * g

    assert a.tolist() == pytest.approx([two_steps(1.0, 1.0), two_steps(2.0, 1.0)], rel=1e-6)
    assert b.tolist() == pytest.approx([two_steps(3.0, 2.0)], rel=1e-12)
    assert c.item() == 4.0 and c not in opt.state
    assert b.dtype == torch.float64 and opt.state[b]["velocity"].dtype == torch.float64


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.head = nn.Linear(2, 2, bias=False)
        self.norm = nn.LayerNorm(2)  # a 1-D *weight*: still a weight by the naming rule
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.tied = self.fc  # shared module: its parameters must be counted once


def test_param_groups_split_by_role_with_lr_mult_and_bias_decay() -> None:
    net = _Net()
    cfg = OptimConfig(lr=0.01, weight_decay=5e-4, bias_lr_mult=2.0, bias_weight_decay=0.0)
    weights, biases = param_groups(net, cfg)
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    assert ids(weights) == {
        id(net.conv.weight),
        id(net.fc.weight),
        id(net.head.weight),
        id(net.norm.weight),
    }
    assert ids(biases) == {id(net.conv.bias), id(net.fc.bias), id(net.norm.bias)}
    assert len(weights["params"]) == 4 and len(biases["params"]) == 3
    assert (weights["lr_mult"], weights["lr"], weights["weight_decay"]) == (1.0, 0.01, 5e-4)
    assert (biases["lr_mult"], biases["lr"], biases["weight_decay"]) == (2.0, 0.02, 0.0)
    _, paper_biases = param_groups(net, OptimConfig())  # §5 defaults: same lr, same decay
    assert (paper_biases["lr"], paper_biases["weight_decay"]) == (0.01, 5e-4)


def test_bias_group_update_and_set_lr() -> None:
    lin = nn.Linear(1, 1).double()
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(3.0)
    cfg = OptimConfig(lr=0.01, bias_lr_mult=2.0, bias_weight_decay=0.0)
    opt = build_optimizer(lin, cfg)
    lin.weight.grad = torch.full((1, 1), 0.5, dtype=torch.float64)
    lin.bias.grad = torch.full((1,), 0.5, dtype=torch.float64)
    opt.step()
    assert lin.weight.item() == pytest.approx(2.0 - 0.01 * (0.5 + 5e-4 * 2.0), rel=1e-14)
    assert lin.bias.item() == pytest.approx(3.0 - 0.02 * 0.5, rel=1e-14)
    set_lr(opt, 0.001)
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.002]


def test_build_optimizer_choices() -> None:
    net = nn.Linear(3, 2)
    paper_opt = build_optimizer(net, OptimConfig())
    assert type(paper_opt) is PaperSGD
    assert [(g["name"], g["momentum"], g["weight_decay"]) for g in paper_opt.param_groups] == [
        ("weights", 0.9, 5e-4),
        ("biases", 0.9, 5e-4),
    ]
    torch_cfg = OptimConfig(momentum_semantics="pytorch", bias_weight_decay=0.0)
    torch_opt = build_optimizer(net, torch_cfg)
    assert type(torch_opt) is torch.optim.SGD
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in torch_opt.param_groups] == [
        (0.01, 0.9, 5e-4),
        (0.01, 0.9, 0.0),
    ]
    frozen = nn.Linear(3, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, OptimConfig())


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    def train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    opt = build_optimizer(model, OptimConfig(lr=0.1, bias_lr_mult=2.0))
    train(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert set(saved["optimizer"]["state"][0]) == {"velocity"}

    clone = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    clone.load_state_dict(saved["model"])
    clone_opt = build_optimizer(clone, OptimConfig(lr=0.1, bias_lr_mult=2.0))
    clone_opt.load_state_dict(saved["optimizer"])
    train(model, opt, 3)
    train(clone, clone_opt, 3)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)


# --- schedules --------------------------------------------------------------------------------

SCHED = ScheduleConfig(patience=2, threshold=0.01, max_drops=2, factor=0.1)


def test_plateau_step_over_a_hand_made_history() -> None:
    history = [
        (0.50, "improved", 0.50, 0, 0),
        (0.45, "improved", 0.45, 0, 0),
        (0.445, "wait", 0.45, 1, 0),  # better, but by less than the threshold 0.01
        (0.439, "improved", 0.439, 0, 0),  # 0.011 below the best that counted: small gains add up
        (0.44, "wait", 0.439, 1, 0),
        (0.43, "drop", 0.439, 0, 1),  # 0.009 < threshold: 2nd bad epoch = patience -> cut
        (0.35, "improved", 0.35, 0, 1),
        (0.36, "wait", 0.35, 1, 1),
        (0.35, "drop", 0.35, 0, 2),  # equal is not better
        (0.30, "improved", 0.30, 0, 2),
        (0.31, "wait", 0.30, 1, 2),
        (0.31, "stop", 0.30, 2, 2),  # a plateau after max_drops = 2 cuts: training ends
    ]
    state = PlateauState()
    assert (state.best, state.bad_epochs, state.drops) == (math.inf, 0, 0)
    for error, event, best, bad, drops in history:
        previous = state
        state, got = plateau_step(state, error, SCHED)
        assert (got, state.best, state.bad_epochs, state.drops) == (event, best, bad, drops), error
        assert plateau_step(previous, error, SCHED) == (state, got)  # pure: no hidden state
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.drops = 0  # type: ignore[misc]


def test_plateau_paper_defaults_three_cuts_then_stop() -> None:
    cfg = ScheduleConfig()  # patience 3, max_drops 3 (§5)
    state, events = PlateauState(), []
    for _ in range(13):
        state, event = plateau_step(state, 0.5, cfg)
        events.append(event)
    assert events == ["improved"] + ["wait", "wait", "drop"] * 3 + ["wait", "wait", "stop"]
    assert state.drops == 3


def test_plateau_edge_cases() -> None:
    no_patience = dataclasses.replace(SCHED, patience=0)
    state, event = plateau_step(PlateauState(best=0.5), 0.6, no_patience)
    assert (event, state.drops) == ("drop", 1)  # patience 0 behaves as 1
    no_cuts = dataclasses.replace(SCHED, patience=1, max_drops=0)
    _, event = plateau_step(PlateauState(best=0.5), 0.6, no_cuts)
    assert event == "stop"
    state, event = plateau_step(PlateauState(best=0.5), float("nan"), SCHED)
    assert (event, state.best) == ("wait", 0.5)


def test_milestone_scale() -> None:
    cfg = ScheduleConfig(type="milestones", milestones=(30, 60))
    scales = {e: milestone_scale(e, cfg) for e in (0, 29, 30, 59, 60, 89)}
    assert scales == pytest.approx({0: 1.0, 29: 1.0, 30: 0.1, 59: 0.1, 60: 0.01, 89: 0.01})
    assert milestone_scale(100, ScheduleConfig(type="milestones")) == 1.0


def _reload(schedule: LRSchedule, cfg: ScheduleConfig, base_lr: float) -> LRSchedule:
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    fresh = LRSchedule(cfg, base_lr)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def test_lr_schedule_plateau_and_state_round_trip() -> None:
    errors = [0.5, 0.45, 0.445, 0.439, 0.44, 0.43, 0.35, 0.36, 0.35, 0.30, 0.31, 0.31]
    schedule = LRSchedule(SCHED, base_lr=0.01)
    seen, best = [], math.inf  # the lowest error so far is the caller's (session.Position)
    for epoch, error in enumerate(errors[:6]):
        seen.append((schedule.lr(epoch), schedule.observe(error, best)))
        best = min(best, error)
    state = schedule.state_dict()
    assert all(type(v) in (str, int, float) for v in state.values())
    resumed = _reload(schedule, SCHED, 0.01)
    assert resumed.state_dict() == state
    for epoch, error in enumerate(errors[6:], start=6):
        a = (schedule.lr(epoch), schedule.observe(error, best))
        b = (resumed.lr(epoch), resumed.observe(error, best))
        assert a == b
        seen.append(a)
        best = min(best, error)
    lrs = [lr for lr, _ in seen]
    assert lrs == pytest.approx([0.01] * 6 + [0.001] * 3 + [0.0001] * 3)
    assert [e for _, e in seen][-1] == "stop"


def test_lr_schedule_milestones() -> None:
    cfg = ScheduleConfig(type="milestones", milestones=(2, 4))
    schedule = LRSchedule(cfg, base_lr=0.02)
    lrs = [schedule.lr(e) for e in range(6)]
    assert lrs == pytest.approx([0.02, 0.02, 0.002, 0.002, 2e-4, 2e-4])
    bests = [math.inf, 0.5, 0.5]  # the lowest error before each epoch
    events = [schedule.observe(err, b) for err, b in zip([0.5, 0.6, 0.4], bests, strict=True)]
    assert events == ["improved", "wait", "improved"]
    assert _reload(schedule, cfg, 0.02).lr(4) == pytest.approx(2e-4)
    with pytest.raises(UserError, match="schedule"):
        LRSchedule(SCHED, 0.01).load_state_dict(schedule.state_dict())
