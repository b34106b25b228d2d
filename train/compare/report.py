"""The comparison side by side: a table on the terminal and a PNG of the same figures."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..plots import save_png


def _stages(results: Mapping[str, Any]) -> list[str]:
    """The evaluation points that every architecture has, in order (before, align, instruct)."""
    seen: list[str] = []
    for column in results["archs"].values():
        seen += [stage for stage in column["stages"] if stage not in seen]
    return seen


def _types(results: Mapping[str, Any], stage: str) -> list[str]:
    names: set[str] = set()
    for column in results["archs"].values():
        names |= set(column["stages"].get(stage, {}).get("per_type", {}))
    return sorted(names)


def _number(value: Any, style: str) -> str:
    if value is None:
        return "-"
    if style == "count":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,}"
    return format(value, style)


def table_rows(results: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """`(label, one cell per architecture)` for every figure of the comparison."""
    archs = list(results["archs"].values())
    stages = _stages(results)
    trained = [stage for stage in stages if stage != "before"]
    final = trained[-1] if trained else stages[-1]

    def row(label: str, get: Callable[[Mapping[str, Any]], Any], style: str) -> tuple[str, list[str]]:
        return label, [_number(get(column), style) for column in archs]

    def stage_value(stage: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda column: column["stages"].get(stage, {}).get(key)

    rows = [row(f"accuracy {stage} (%)", stage_value(stage, "accuracy"), ".1f") for stage in stages]
    rows += [
        row(f"  {name} ({final})", lambda column, name=name: column["stages"].get(final, {}).get("per_type", {}).get(name),
            ".1f")
        for name in _types(results, final)
    ]  # fmt: skip
    rows.append(row("image tokens per image", lambda column: column["image_tokens_per_image"], "d"))
    rows.append(row("parameters", lambda column: column["total_parameters"], "count"))
    for stage in trained:
        rows.append(row(f"trainable parameters {stage}", stage_value(stage, "trainable_parameters"), "count"))
    for stage in trained:
        rows.append(row(f"steps {stage}", stage_value(stage, "steps"), "d"))
    for stage in trained:
        rows.append(row(f"samples/s {stage}", stage_value(stage, "samples_per_second"), ".1f"))
    for stage in trained:
        rows.append(row(f"peak memory {stage} (MiB)", stage_value(stage, "peak_memory_mb"), ".0f"))
    for stage in trained:
        rows.append(row(f"train time {stage} (s)", stage_value(stage, "train_seconds"), ".0f"))
    rows.append(row("wall time (min)", lambda column: column["wall_seconds"] / 60, ".1f"))
    return rows


def format_table(results: Mapping[str, Any]) -> str:
    names = list(results["archs"])
    rows = table_rows(results)
    width = max(len(label) for label, _ in rows)
    cell = max(12, *(len(name) for name in names))
    lines = [" " * width + "".join(f"{name:>{cell}}" for name in names)]
    lines.append("-" * len(lines[0]))
    lines += [f"{label:<{width}}" + "".join(f"{value:>{cell}}" for value in cells) for label, cells in rows]
    return "\n".join(lines)


def print_table(results: Mapping[str, Any]) -> None:
    print(format_table(results))


def save_comparison_plot(results: Mapping[str, Any], path: str | os.PathLike) -> Path | None:
    """Accuracy per stage and per question type, the loss curves, samples/s, peak memory and wall time of each
    architecture, side by side, in a PNG at `path` (None, with a warning, without matplotlib)."""
    names = list(results["archs"])
    columns = list(results["archs"].values())
    stages = _stages(results)
    trained = [stage for stage in stages if stage != "before"]
    final = trained[-1] if trained else stages[-1]
    types = _types(results, final)
    width = 0.8 / max(len(names), 1)

    def bars(axes, groups: list[str], value: Callable[[Mapping[str, Any], str], Any], title: str, unit: str) -> None:
        for i, (name, column) in enumerate(zip(names, columns, strict=True)):
            heights = [value(column, group) or 0 for group in groups]
            positions = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
            drawn = axes.bar(positions, heights, width=width, label=name)
            axes.bar_label(drawn, fmt="%.3g", fontsize=7, padding=1)
        axes.set_xticks(range(len(groups)), groups, fontsize=8)
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(unit, fontsize=8)
        axes.margins(y=0.15)
        axes.grid(axis="y", alpha=0.3)

    def draw(figure) -> None:
        grid = figure.subplots(2, 3)
        bars(grid[0][0], stages, lambda c, s: c["stages"].get(s, {}).get("accuracy"), "Accuracy per stage", "%")
        grid[0][0].legend(fontsize=8)
        if types:
            bars(grid[0][1], types, lambda c, t: c["stages"].get(final, {}).get("per_type", {}).get(t),
                 f"Accuracy per question type ({final})", "%")  # fmt: skip
        else:
            grid[0][1].set_axis_off()
            grid[0][1].set_title("(the evaluation data has no question types)", fontsize=9)
        curves = grid[0][2]
        for name, column in zip(names, columns, strict=True):
            for stage in trained:
                points = column["stages"][stage].get("loss_curve") or []
                if points:
                    steps, losses = zip(*points, strict=True)
                    curves.plot(steps, losses, label=f"{name} {stage}")
        curves.set_title("Training loss", fontsize=10)
        curves.set_xlabel("step", fontsize=8)
        curves.set_yscale("log")
        curves.legend(fontsize=7)
        curves.grid(alpha=0.3)
        bars(grid[1][0], trained, lambda c, s: c["stages"][s].get("samples_per_second"), "Training speed", "samples/s")
        bars(grid[1][1], trained, lambda c, s: c["stages"][s].get("peak_memory_mb"), "Peak memory", "MiB")
        bars(grid[1][2], ["total"], lambda c, _: c["wall_seconds"] / 60, "Wall time (build, train, evaluate)", "min")
        figure.tight_layout()

    return save_png(path, draw, figsize=(15, 8), dpi=100)


__all__ = ["format_table", "print_table", "save_comparison_plot", "table_rows"]
