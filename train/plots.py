"""The loss curve of a training run, drawn from the Trainer's log history into a PNG (matplotlib, Agg)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

LOSS_CURVE_NAME = "loss_curve.png"


@functools.cache
def _warn_no_matplotlib(name: str) -> None:
    logger.warning("matplotlib is not installed: no %s is written (pip install matplotlib).", name)


def save_png(path: str | os.PathLike, draw: Callable[[Any], None], figsize: tuple[float, float], dpi: int = 100):
    """Draws a matplotlib figure of `figsize` with `draw(figure)` (Agg, without pyplot or a global backend switch)
    and writes it as a PNG at `path`, atomically (a partial file, renamed); returns the path, or None with a warning
    when matplotlib is missing or drawing fails: a plot is never worth the run that makes it."""
    path = Path(path)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        _warn_no_matplotlib(path.name)
        return None
    partial = path.with_name(f"_{path.name}.tmp")
    try:
        figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(figure)
        draw(figure)
        figure.savefig(partial, format="png")
        os.replace(partial, path)
    except Exception as error:
        logger.warning("Could not write the plot %s: %s", path, error)
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return None
    return path


def loss_points(log_history: Iterable[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """The `(step, value)` pairs of `key` (`loss`, `eval_loss`) in a Trainer's `state.log_history`."""
    return [
        (int(entry["step"]), float(entry[key]))
        for entry in log_history
        if isinstance(entry.get(key), (int, float)) and isinstance(entry.get("step"), (int, float))
    ]


def save_loss_curve(log_history: Iterable[Mapping[str, Any]], path: str | os.PathLike, title: str) -> Path | None:
    """Writes the training loss per step (and the evaluation loss, when there is one) of `log_history` as a PNG at
    `path`; returns the path, or None when nothing was logged, matplotlib is missing or the plot failed (a warning
    says why: plotting never fails a run)."""
    history = list(log_history)
    train, evaluation = loss_points(history, "loss"), loss_points(history, "eval_loss")
    if not train and not evaluation:
        logger.info("No loss was logged (fewer steps than --logging_steps?): no %s is written.", Path(path).name)
        return None

    def draw(figure) -> None:
        from matplotlib.ticker import MaxNLocator

        axes = figure.add_subplot()
        for points, label, style in ((train, "training loss", "-"), (evaluation, "evaluation loss", "--")):
            if points:
                steps, values = zip(*points, strict=True)
                marker = "o" if len(points) <= 50 else None  # a single logged step stays visible
                axes.plot(steps, values, style, marker=marker, markersize=3, label=label)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()

    return save_png(path, draw, figsize=(7, 4.2), dpi=120)


__all__ = ["LOSS_CURVE_NAME", "loss_points", "save_loss_curve", "save_png"]
