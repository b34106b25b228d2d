"""Experiment tracking of `minillava sft`: the recipes' `report_to: auto` (TensorBoard where it is installed), and
TensorBoard logs that pushes during training never upload half-written."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from transformers.integrations import TensorBoardCallback, is_tensorboard_available
from transformers.integrations.integration_utils import default_logdir


logger = logging.getLogger(__name__)

# `report_to: auto` (the shipped recipes): TensorBoard where it is installed, else no tracker. transformers' own
# default is "none"; an explicit --report_to replaces the recipe's value.
AUTO_REPORT = "auto"
TENSORBOARD_FOLDER = "runs"  # where transformers' TensorBoardCallback writes, under output_dir
LIVE_TENSORBOARD_FOLDER = "_tensorboard"  # while training, when pushing during training ("_*" is never pushed)


def resolve_report_to(report_to: str | list[str] | None) -> list[str]:
    """The trackers of a run: `auto` becomes `tensorboard` where TensorBoard is installed and nothing where it is
    not; every other value is kept as given (`none`: none)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    resolved: list[str] = []
    for name in names:
        if name == AUTO_REPORT:
            if not is_tensorboard_available():
                logger.info("report_to auto: TensorBoard is not installed, nothing is logged to a tracker.")
                continue
            name = "tensorboard"
        if name and name != "none" and name not in resolved:
            resolved.append(name)
    return resolved


class StagedTensorBoardCallback(TensorBoardCallback):
    """transformers' TensorBoard logging, written under `output_dir/_tensorboard/` while training and moved to
    `output_dir/runs/` when training ends, so that pushes during training (which skip `_*`) never upload an event
    file while it grows; the final push carries the finished logs. `TENSORBOARD_LOGGING_DIR` still wins."""

    def on_train_begin(self, args, state, control, **kwargs):
        if self.logging_dir is None and not state.is_hyper_param_search:
            run = os.path.basename(default_logdir())  # runs/<date>_<host>: <date>_<host>
            self.logging_dir = os.path.join(args.output_dir, LIVE_TENSORBOARD_FOLDER, run)
        super().on_train_begin(args, state, control, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)  # closes the writer
        if state.is_world_process_zero:
            publish_tensorboard_logs(args.output_dir)


def publish_tensorboard_logs(output_dir: str | os.PathLike) -> None:
    """Moves the finished TensorBoard runs of `output_dir/_tensorboard/` (this run's and those of a killed run that
    this one resumed) to `output_dir/runs/`."""
    live, final = Path(output_dir) / LIVE_TENSORBOARD_FOLDER, Path(output_dir) / TENSORBOARD_FOLDER
    if not live.is_dir():
        return
    for run in sorted(live.iterdir()):
        target = final / run.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            for file in run.rglob("*"):
                if file.is_file():
                    (target / file.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(file, target / file.relative_to(run))
            shutil.rmtree(run, ignore_errors=True)
        else:
            os.replace(run, target)
    shutil.rmtree(live, ignore_errors=True)


def stage_tensorboard(trainer) -> None:
    """Replaces the Trainer's TensorBoard callback by a [`StagedTensorBoardCallback`] when the run pushes during
    training (`push_to_hub` with a `hub_strategy` other than `end`)."""
    from transformers.trainer_utils import HubStrategy

    args = trainer.args
    if not args.push_to_hub or args.hub_strategy == HubStrategy.END:
        return
    callbacks = trainer.callback_handler.callbacks
    for index, callback in enumerate(callbacks):
        if type(callback) is TensorBoardCallback and callback.tb_writer is None:
            staged = StagedTensorBoardCallback()
            staged.logging_dir = callback.logging_dir  # TENSORBOARD_LOGGING_DIR, when set
            callbacks[index] = staged


__all__ = [
    "AUTO_REPORT",
    "LIVE_TENSORBOARD_FOLDER",
    "TENSORBOARD_FOLDER",
    "StagedTensorBoardCallback",
    "publish_tensorboard_logs",
    "resolve_report_to",
    "stage_tensorboard",
]
