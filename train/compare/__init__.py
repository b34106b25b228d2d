"""`minillava compare`: MiniGPT-4 and LLaVA-1.5 trained alike on the same data and evaluated side by side.

| module | what |
|---|---|
| [`run`] | `CompareArguments`, `compare` (build, train each stage, evaluate with `minillava eval`), the command |
| [`budget`] | `Budget`: each stage's epochs, steps, samples or minutes, the same for both architectures |
| [`report`] | the side-by-side table and plot |
"""

from .budget import Budget, TimeBudget
from .report import format_table, save_comparison_plot
from .run import ARCHS, CompareArguments, compare, main


__all__ = ["ARCHS", "Budget", "CompareArguments", "TimeBudget", "compare", "format_table", "main",
           "save_comparison_plot"]  # fmt: skip
