"""The worked example in docs/resizable.md runs as written, and its claims hold."""

import re
from pathlib import Path

import torch

from dmao.realloc import contract_deviations
from dmao.resizable import GroupAxis

DOC = Path(__file__).resolve().parents[2] / "docs" / "resizable.md"


def run_doc() -> dict:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 3, f"{DOC} should hold the module, the check and the loop"
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)
    return namespace


def test_worked_example_runs_and_reallocates():
    namespace = run_doc()
    engine = namespace["engine"]
    (report,) = engine.reports
    assert report.groups_after != report.groups_before
    assert sum(report.groups_after.values()) != 0
    optimized = {id(p) for group in namespace["optimizer"].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in namespace["model"].parameters()}


def test_forgetting_blocks_breaks_the_checks_as_the_doc_says():
    namespace = run_doc()
    module = namespace["GLUFeedForward"](d_model=16, num_groups=4, group_size=8).double()
    module.group_axes = lambda: [
        GroupAxis("linear_in.weight", dim=0, primary=True),
        GroupAxis("linear_in.bias", dim=0, init="zeros"),
        GroupAxis("linear_out.weight", dim=1, outgoing=True),
    ]
    deviations = contract_deviations(module, torch.randn(2, 10, 16, dtype=torch.float64), group=2)
    assert deviations["drop_vs_zeroed"] > 1e-3 and deviations["split_preserves"] > 1e-3
