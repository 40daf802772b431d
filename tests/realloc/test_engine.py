import ast
import copy
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from realloc_toys import ToyNet
from torch import nn

import dmao.realloc as realloc_package
from dmao.realloc import EventReport, GrowConfig, Reallocator, ReallocConfig, ScheduleConfig, ScoreConfig
from dmao.realloc.groups import group_cost
from dmao.realloc.planner import plan_event
from dmao.realloc.scores import step_seed

TOTAL = 40


def config(**score) -> ReallocConfig:
    return ReallocConfig(
        score=ScoreConfig(**{"interval": 2, **score}),
        schedule=ScheduleConfig(t_end=0.25, delta=0.3),  # event after step 10
        grow=GrowConfig(mode="split"),
    )


class Run:
    """A toy training run driven the way the training loop drives the engine."""

    def __init__(self, cfg: ReallocConfig, counts=None, gated=False) -> None:
        torch.manual_seed(0)
        self.net = ToyNet(counts or [{"ff1": 3, "mhsa": 2, "conv": 3}] * 2, gated=gated)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0 - step / (TOTAL + 1))
        modules = self.net.resizable_modules()
        if gated:  # the learnable score needs gates, which only the toy MLPs have
            modules = {name: m for name, m in modules.items() if getattr(m, "group_gate", None) is not None}
        self.engine = Reallocator(modules, cfg, total_steps=TOTAL, seed=7)
        self.step = 0
        self.reports: list[EventReport] = []

    def train(self, until: int) -> None:
        while self.step < until:
            self.step += 1
            data = torch.Generator().manual_seed(self.step)
            x, target = torch.randn(4, 3, 8, generator=data), torch.randn(4, 3, generator=data)
            self.engine.before_forward(self.step)
            loss = (self.net(x) - target).square().mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.engine.after_backward(self.step, float(loss.detach()))
            self.optimizer.step()
            self.scheduler.step()
            if self.engine.due(self.step):
                self.reports.append(self.engine.reallocate(self.step, self.optimizer))

    def state(self) -> dict:
        return copy.deepcopy(
            {
                "counts": self.net.counts(),
                "model": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "engine": self.engine.state_dict(),
                "step": self.step,
            }
        )

    @classmethod
    def resumed(cls, cfg: ReallocConfig, state: dict) -> "Run":
        run = cls(cfg, counts=state["counts"])  # the model is rebuilt from the saved layout first
        run.net.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.engine.load_state_dict(state["engine"])
        run.step = state["step"]
        return run


def test_one_event_keeps_the_parameter_total_within_one_group():
    run = Run(config())
    costs = {name: group_cost(m) for name, m in run.net.resizable_modules().items()}
    run.train(TOTAL)
    assert len(run.reports) == 1
    report = run.reports[0]
    assert report.step == 10 and report.event == 1 and report.reason.startswith("fixed schedule")
    assert report.groups_after != report.groups_before
    assert abs(report.params_after - report.params_before) <= max(costs.values())
    assert report.params_after == sum(p.numel() for m in run.net.resizable_modules().values() for p in m.parameters())
    optimized = [p for group in run.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimized} == {id(p) for p in run.net.parameters()}
    assert report.groups_after == run.engine.group_counts()
    json.dumps(report.to_dict())  # plain data for the metrics log
    assert EventReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert "ff1" in report.summary() and "parameters" in report.summary()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # a toy rebuilt with an empty module
@pytest.mark.parametrize("resume_at", [7, 13])  # before and after the event
def test_resume_gives_the_same_run(resume_at):
    cfg = config(accumulate=True)
    reference = Run(cfg)
    reference.train(TOTAL)
    first = Run(cfg)
    first.train(resume_at)
    resumed = Run.resumed(cfg, first.state())
    resumed.train(TOTAL)
    assert resumed.net.counts() == reference.net.counts()
    for (name, a), b in zip(reference.net.state_dict().items(), resumed.net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r.plan for r in resumed.engine.reports] == [r.plan for r in reference.engine.reports]


def learnable_run() -> Run:
    cfg = config(kind="learnable", gate_skip_prob=0.5)
    cfg.schedule.delta = 0.2  # only the gated toy MLPs take part: fewer parameters to balance
    return Run(cfg, gated=True)


def test_learnable_score_switches_gates_and_ranks_by_gate_size():
    run = learnable_run()
    modules = run.engine.modules
    active = []
    for _ in range(8):
        run.train(run.step + 1)
        active.append(modules["layers.0.ff1"].gates_active)
    assert True in active and False in active
    # Give the gates clearly different sizes, then measure again: the smallest gates are dropped, the largest grown.
    sizes = {"layers.0.ff1": [0.9, -2.0, 0.05], "layers.1.ff1": [1.5, 0.02, -0.7]}
    with torch.no_grad():
        for name, values in sizes.items():
            modules[name].group_gate.copy_(torch.tensor(values))
    run.engine.scores.reset()
    run.engine.after_backward(10)  # a measuring step: the score is |gate|
    plan = run.engine.plan(10)
    for name, values in sizes.items():
        assert plan.modules[name].scores == pytest.approx([abs(v) for v in values])
    dropped = {(n, i) for n, m in plan.modules.items() for i in m.dropped}
    grown = {(n, i) for n, m in plan.modules.items() for i in m.grown}
    assert dropped == {("layers.1.ff1", 1), ("layers.0.ff1", 2)}  # |gate| 0.02 and 0.05
    assert ("layers.0.ff1", 1) in grown  # |gate| 2.0


def test_learnable_gates_stay_on_after_the_last_event():
    run = learnable_run()
    gated = list(run.engine.modules.values())
    run.train(10)  # the event is after step 10
    assert run.engine.schedule.finished
    for _ in range(20):  # with a skip share of 0.5, some of these steps would switch the gates off
        run.train(run.step + 1)
        assert all(m.gates_active for m in gated if m.num_groups), f"gates off at step {run.step}"


def test_per_type_normalisation_reaches_the_plan():
    def planned(normalize_per_type: bool, normalize_as=None):
        cfg = ReallocConfig(
            score=ScoreConfig(
                kind="magnitude",
                interval=2,
                normalize_per_type=normalize_per_type,
                normalize_as=normalize_as if normalize_as is not None else {"ff1": "ffn"},
            ),
            schedule=ScheduleConfig(t_end=0.25, delta=0.2),
        )
        run = Run(cfg)
        with torch.no_grad():  # attention weights 100 times larger: raw magnitudes would grow every head
            for name, module in run.net.resizable_modules().items():
                if name.endswith("mhsa"):
                    module.out.weight.mul_(100.0)
        run.train(2)
        return run.engine.plan(2), run.engine.scores.scores()

    raw, scores = planned(False)
    assert set(raw.type_scale.values()) == {1.0}
    assert all(not m.dropped for n, m in raw.modules.items() if n.endswith("mhsa"))
    normalised, scores = planned(True)
    assert normalised == plan_event(
        scores,
        {n: m.group_cost for n, m in normalised.modules.items()},
        normalised.budget,
        {"ff1": "ffn"},
        tie_seed=step_seed(7, 2),
    )
    assert set(normalised.type_scale) == {"ffn", "mhsa", "conv"} and normalised != raw


def test_a_budget_that_cannot_balance_is_refused_at_construction():
    net = ToyNet.uniform(2)
    cfg = ReallocConfig(score=ScoreConfig(interval=2), schedule=ScheduleConfig(t_end=0.25, delta=0.55))
    with pytest.raises(
        ValueError,
        match=r"delta=0.55 cannot balance.*largest delta that balances every event here "
        r"is 0\.\d+",
    ):
        Reallocator(net.resizable_modules(), cfg, total_steps=TOTAL)
    message = ""
    try:
        Reallocator(net.resizable_modules(), cfg, total_steps=TOTAL)
    except ValueError as err:
        message = str(err)
    largest = float(message.split("is ")[1].split(" ")[0])
    cfg.schedule.delta = largest  # the delta it names is accepted
    Reallocator(net.resizable_modules(), cfg, total_steps=TOTAL)


def test_tied_scores_warn_and_are_not_broken_by_module_order(caplog):
    cfg = ReallocConfig(score=ScoreConfig(kind="magnitude", interval=2), schedule=ScheduleConfig(t_end=0.25, delta=0.2))
    run = Run(cfg, counts=[{"ff1": 3, "mhsa": 2, "conv": 3}] * 4)
    with torch.no_grad():  # every FFN group alike, and above every other group: growth must choose among them
        for name, module in run.net.resizable_modules().items():
            if name.endswith("ff1"):
                module.linear_in.weight.fill_(0.5)
    run.engine.after_backward(10)  # magnitude needs no gradient; the event is due after step 10
    with caplog.at_level("WARNING", logger="dmao.realloc.engine"):
        report = run.engine.reallocate(10, run.optimizer)
    assert "tied at a cut" in caplog.text and report.plan.tied_share == pytest.approx(12 / 32)
    ffn_groups = [(f"layers.{i}.ff1", g) for i in range(4) for g in range(3)]
    grown = {(n, g) for n, m in report.plan.modules.items() if n.endswith("ff1") for g in m.grown}
    assert 0 < len(grown) < 12
    assert grown != set(ffn_groups[-len(grown) :]), "the tie was broken by module order"


def test_state_dicts_refuse_unknown_and_missing_keys():
    run = Run(config())
    run.train(4)
    state = run.engine.state_dict()
    for broken, where in (
        ({**state, "extra": 1}, "re-allocation engine state: unexpected \\['extra'\\]"),
        ({**state, "scores": {**state["scores"], "alpha": 0.9}}, "score tracker state: unexpected"),
        (
            {**state, "schedule": {k: v for k, v in state["schedule"].items() if k != "losses"}},
            "event schedule state: missing \\['losses'\\]",
        ),
    ):
        with pytest.raises(ValueError, match=where):
            Run(config()).engine.load_state_dict(broken)


def test_an_emptied_module_never_regrows():
    cfg = ReallocConfig(
        score=ScoreConfig(kind="magnitude", interval=2),
        schedule=ScheduleConfig(num_events=2, t_end=0.5, delta=0.6),  # events after steps 10 and 20
    )
    run = Run(cfg, counts=[{"ff1": 3, "mhsa": 2, "conv": 3}])
    ff1 = run.net.resizable_modules()["layers.0.ff1"]
    with torch.no_grad():
        ff1.linear_in.weight.mul_(1e-3)  # by far the smallest magnitudes: the whole module goes
    ff1_params = list(ff1.parameters())  # kept alive, so that their ids cannot be reused by new parameters
    run.train(TOTAL)
    first, second = run.reports
    assert first.groups_after["layers.0.ff1"] == 0 and second.groups_after["layers.0.ff1"] == 0
    assert "layers.0.ff1" not in second.plan.modules
    optimized = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    assert not {id(p) for p in ff1_params} & optimized and not list(ff1.parameters())


def test_convergence_trigger_fires_on_a_stable_ranking_within_bounds():
    cfg = ReallocConfig(
        score=ScoreConfig(kind="magnitude", interval=2),
        schedule=ScheduleConfig(
            trigger="convergence", min_fraction=0.2, max_fraction=0.6, rank_correlation=0.5, patience=2, delta=0.2
        ),
    )
    run = Run(cfg)
    run.train(TOTAL)
    (report,) = run.reports
    assert 8 <= report.step <= 24 and "ranking stable" in report.reason


def test_misuse_is_reported_clearly():
    run = Run(config())
    with pytest.raises(RuntimeError, match="no re-allocation event is due at step 3"):
        run.engine.reallocate(3, run.optimizer)
    with pytest.raises(ValueError, match="steps count from 1"):
        run.engine.after_backward(0)
    with pytest.raises(TypeError, match="'head' \\(Linear\\) is not resizable"):
        Reallocator({"head": nn.Linear(2, 2)}, config(), total_steps=TOTAL)
    other = Run(config(), counts=[{"ff1": 2, "mhsa": 2, "conv": 3}] * 2)
    with pytest.raises(ValueError, match="layers.0.ff1, layers.1.ff1\\): build the model"):
        other.engine.load_state_dict(run.engine.state_dict())


def test_the_engine_imports_only_torch_the_standard_library_and_the_contract():
    package = Path(realloc_package.__file__).parent
    allowed = ("torch", "dmao.realloc", "dmao.resizable", "__future__")
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                top = name.split(".")[0]
                assert name.startswith(allowed) or (top in sys.stdlib_module_names and top != "dmao"), (path, name)


def test_the_largest_delta_named_is_itself_accepted_even_at_an_exact_limit():
    from dmao.realloc import check_delta

    schedule = ScheduleConfig(delta=0.5)
    with pytest.raises(ValueError, match=r"is 0.374 ") as refused:  # the limit is exactly 0.375 (P 800, c 100)
        check_delta(schedule, total=800, dearest=100.0)
    largest = float(str(refused.value).split("here is ")[1].split(" ")[0])
    check_delta(ScheduleConfig(delta=largest), total=800, dearest=100.0)


def test_any_planning_failure_becomes_an_event_error(monkeypatch):
    from dmao.realloc import EventError

    run = Run(config())
    run.train(9)
    run.engine.after_backward(10)

    def broken(step):
        raise RuntimeError("boom")

    monkeypatch.setattr(run.engine, "plan", broken)
    with pytest.raises(EventError, match="cannot be planned: RuntimeError: boom"):
        run.engine.reallocate(10, run.optimizer)


def test_events_not_applied_are_planned_and_reported_but_leave_the_run_unchanged():
    """apply_events=false (DMAO's tracking without its events) trains exactly the run without an engine event."""
    tracked, applied = Run(dataclasses.replace(config(), apply_events=False)), Run(config())
    tracked.train(TOTAL)
    applied.train(TOTAL)
    (report,) = tracked.reports
    assert not report.applied and "planned only" in report.reason
    assert report.groups_after == report.groups_before and report.params_after == report.params_before
    assert any(plan.dropped for plan in report.plan.modules.values())  # there was something to move
    assert applied.reports[0].applied and applied.reports[0].groups_after != applied.reports[0].groups_before
    # The same steps as a run whose engine never reaches its event: identical weights at the end.
    reference = Run(config())
    reference.engine.due = lambda step: False
    reference.train(TOTAL)
    for (name, a), b in zip(tracked.net.state_dict().items(), reference.net.state_dict().values()):
        assert torch.equal(a, b), name
