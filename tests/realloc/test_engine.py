import ast
import copy
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


def test_learnable_score_switches_gates_and_ranks_by_gate_size():
    run = Run(config(kind="learnable", gate_skip_prob=0.5), gated=True)
    ff1 = run.net.resizable_modules()["layers.0.ff1"]
    active = []
    for _ in range(8):
        run.train(run.step + 1)
        active.append(ff1.gates_active)
    assert True in active and False in active
    run.train(TOTAL)
    plan = run.reports[0].plan
    assert plan.modules["layers.0.ff1"].scores  # gated modules are scored
    run.engine.set_gates_active(True)
    assert ff1.gates_active


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
