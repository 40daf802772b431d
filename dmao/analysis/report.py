"""A checkpoint's layout as text: groups per layer, and groups and parameters per module type against the start."""

from __future__ import annotations

from pathlib import Path

from dmao.model import CTCModel
from dmao.training.checkpoint import model_from_checkpoint, open_checkpoint


def _type_table(
    groups: dict[str, int],
    params: dict[str, int],
    start_groups: dict[str, int] | None,
    start_params: dict[str, int] | None,
) -> str:
    """Groups and parameters per module type (then the fixed parts and the total); with a start: start -> now."""
    total = params["total"]
    if start_groups is None or start_params is None:
        lines = [f"{'module':<12} {'groups':>6} {'parameters':>13} {'share':>7}"]
        for name, count in params.items():
            share = f"{100 * count / total:6.1f}%"
            lines.append(f"{name:<12} {groups.get(name, '')!s:>6} {count:>13,} {share:>7}")
        return "\n".join(lines)
    lines = [f"{'module':<12} {'groups start -> now':>19} {'parameters start -> now':>29} {'change':>9}"]
    for name, count in params.items():
        group_column = f"{start_groups[name]:>6} -> {groups[name]:<6}" if name in groups else ""
        change = count - start_params[name]
        lines.append(f"{name:<12} {group_column:>19} {start_params[name]:>14,} -> {count:<11,} {change:>+9,}")
    return "\n".join(lines)


def layout_report(checkpoint_path: str | Path) -> str:
    """The layout of a checkpoint (a ``ckpt-*.pt`` file, or the newest one of a run or checkpoints directory): groups
    per layer, groups and parameters per module type, and, where it differs from the configuration's starting layout,
    that layout and the change per module type."""
    path, state = open_checkpoint(checkpoint_path)
    model, tokenizer, cfg = model_from_checkpoint(state)
    layout, start = model.layout(), cfg.model.encoder.starting_layout()
    params = model.parameter_counts()
    lines = [
        f"checkpoint {path} (step {state.get('step', '?')})",
        f"{layout.block_type} encoder: {layout.num_layers} layers, d_model {layout.d_model}; one group = "
        f"{layout.ff_group_size} FFN units / {layout.conv_group_size} conv channels / a head of {layout.head_dim}",
        "",
        "groups per layer:",
        layout.table(),
        "",
    ]
    if layout == start:
        lines += [
            "by module type (the starting layout, unchanged):",
            _type_table(layout.total_groups(), params, None, None),
        ]
    else:
        start_params = CTCModel(cfg.model, tokenizer.vocab_size, layout=start).parameter_counts()
        lines += [
            "starting layout (from the configuration):",
            start.table(),
            "",
            "by module type:",
            _type_table(layout.total_groups(), params, start.total_groups(), start_params),
        ]
    return "\n".join(lines)
