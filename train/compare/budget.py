"""A training budget that both architectures get alike: epochs, optimizer steps, samples or minutes per stage."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback


UNITS = ("epochs", "steps", "samples", "minutes")
_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(epochs?|steps?|samples?|minutes?|min)\s*$")


@dataclass(frozen=True)
class Budget:
    """`amount` of `unit` for one stage; written as `2epochs`, `500steps`, `8000samples` or `30minutes`."""

    amount: float
    unit: str

    @classmethod
    def parse(cls, spec: str) -> Budget:
        match = _SPEC.match(spec.lower())
        if match is None or float(match.group(1)) <= 0:
            raise ValueError(
                f"budget {spec!r}: write a positive number and a unit, e.g. 2epochs, 500steps, 8000samples, 30minutes"
            )
        unit = "minutes" if match.group(2) == "min" else match.group(2).rstrip("s") + "s"
        amount = float(match.group(1))
        if unit in ("steps", "samples") and not amount.is_integer():
            raise ValueError(f"budget {spec!r}: {unit} are counted in whole numbers")
        return cls(amount, unit)

    def __str__(self) -> str:
        return f"{self.amount:g}{self.unit}"

    def sft_flags(self) -> list[str]:
        """The `minillava sft` flags that set this budget where a flag can (epochs and steps)."""
        if self.unit == "epochs":
            return ["--num_train_epochs", f"{self.amount:g}", "--max_steps", "-1"]
        if self.unit == "steps":
            return ["--max_steps", str(int(self.amount))]
        return []

    def apply(self, training_args: Any) -> None:
        """Sets `max_steps` for a sample budget: the optimizer steps that see that many samples at the recipe's
        global batch size (a last partial batch counts as a step)."""
        if self.unit == "samples":
            global_batch = (
                training_args.per_device_train_batch_size
                * training_args.gradient_accumulation_steps
                * max(training_args.world_size, 1)
            )
            training_args.max_steps = math.ceil(self.amount / global_batch)

    def callbacks(self) -> list[TrainerCallback]:
        """A [`TimeBudget`] for a minute budget; nothing otherwise."""
        return [TimeBudget(self.amount * 60)] if self.unit == "minutes" else []


class TimeBudget(TrainerCallback):
    """Stops training at the first optimizer step that ends after `seconds` of training (the learning-rate schedule
    keeps the recipe's length: set the epochs or steps it plans for with the stage's own flags)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started: float | None = None
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if self.started is not None and time.monotonic() - self.started >= self.seconds:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control


__all__ = ["UNITS", "Budget", "TimeBudget"]
