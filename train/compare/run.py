"""`minillava compare`: MiniGPT-4 or LLaVA-1.5 for *your* data? Both are built from the same language model, trained
on the same data with the same recipe, budget and seed (stage 1 on captions when given, then stage 2), evaluated
with `minillava eval` on the same held-out questions after each stage, and reported side by side: accuracy overall
and per question type, trainable parameters, image tokens per image, samples/s, peak memory and wall time.

```bash
minillava compare --data llava_v1_5_mix665k.json --image_folder playground/data --eval_data held_out.json \\
    --captions blip_laion_cc_sbu_558k.json --caption_image_folder playground/data/LLaVA-Pretrain/images \\
    --text_model lmsys/vicuna-7b-v1.5 --budget 2000samples --output_dir compare-7b
```

`--eval_data` is LLaVA conversation JSON (the first reply of each record is its answer, its `type` or `category`
the question type) or LLaVA's eval question JSONL with `answer`/`answers`; it is scored as `minillava eval
--benchmark vqa` (exact match after the official VQA normalisation). Each stage runs in this process on one device
through `minillava sft`'s code path; `--align_args` / `--instruct_args` pass further `minillava sft` flags to that
stage of both architectures (e.g. `--instruct_args "--use_peft true --lora_r 128"`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .budget import Budget
from .report import print_table, save_comparison_plot


logger = logging.getLogger(__name__)

ARCHS = ("llava-1.5", "minigpt4")
STAGES = ("align", "instruct")
RESULTS_NAME = "compare.json"
PLOT_NAME = "compare.png"


def parse_archs(archs: str) -> list[str]:
    """The architectures of a comma-separated `--archs` value, checked."""
    names = [arch.strip() for arch in archs.split(",") if arch.strip()]
    if not names or set(names) - set(ARCHS):
        raise ValueError(f"--archs {archs!r}: choose from {', '.join(ARCHS)}")
    return names


@dataclass
class CompareArguments:
    """What `minillava compare` trains and evaluates."""

    data: str = field(metadata={"help": "Stage-2 (instruct) data: any file or dataset `minillava sft` reads."})
    eval_data: str = field(
        metadata={"help": "Held-out questions with answers: LLaVA conversation JSON or eval JSONL with answer(s)."}
    )
    text_model: str = field(metadata={"help": "The causal language model both architectures are built on."})
    llava_vision: str = field(
        default="openai/clip-vit-large-patch14-336", metadata={"help": "LLaVA-1.5's vision tower (CLIP/SigLIP)."}
    )
    minigpt4_vision: str = field(
        default="Salesforce/blip2-flan-t5-xxl", metadata={"help": "MiniGPT-4's BLIP-2 (ViT-g, Q-Former, queries)."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Images of --data (LLaVA's --image_folder)."})
    captions: str | None = field(
        default=None, metadata={"help": "Stage-1 (align) caption data; without it, only stage 2 is trained."}
    )
    caption_image_folder: str | None = field(
        default=None, metadata={"help": "Images of --captions (default: --image_folder)."}
    )
    eval_image_folder: str | None = field(
        default=None, metadata={"help": "Images of --eval_data (default: --image_folder)."}
    )
    output_dir: str = field(default="minillava-compare", metadata={"help": "Models, compare.json and compare.png."})
    archs: str = field(default=",".join(ARCHS), metadata={"help": "Comma-separated architectures to compare."})
    budget: str | None = field(
        default=None,
        metadata={"help": "Each stage's budget: 2epochs, 500steps, 8000samples or 30minutes (default: the recipe's)."},
    )
    align_budget: str | None = field(default=None, metadata={"help": "Stage 1's budget (overrides --budget)."})
    instruct_budget: str | None = field(default=None, metadata={"help": "Stage 2's budget (overrides --budget)."})
    align_recipe: str = field(default="llava-1.5-align", metadata={"help": "Stage 1's recipe, for both."})
    instruct_recipe: str = field(default="llava-1.5-instruct", metadata={"help": "Stage 2's recipe, for both."})
    align_args: str = field(default="", metadata={"help": "More `minillava sft` flags for stage 1 of both."})
    instruct_args: str = field(default="", metadata={"help": "More `minillava sft` flags for stage 2 of both."})
    dtype: str = field(default="float32", metadata={"help": "dtype of the built models (`minillava build`)."})
    seed: int = field(default=0, metadata={"help": "Seed of the connectors' initialisation and of training."})
    eval_before: bool = field(default=True, metadata={"help": "Also evaluate the built models before training."})
    eval_batch_size: int = field(default=32, metadata={"help": "Questions answered per batch."})
    max_new_tokens: int = field(default=32, metadata={"help": "Longest answer generated."})
    eval_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N questions only."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the models, answers and results of an earlier comparison there."}
    )

    def archs_list(self) -> list[str]:
        return parse_archs(self.archs)

    def stage_budgets(self) -> dict[str, Budget | None]:
        """Each stage's [`Budget`], None where the recipe's own length applies."""
        specs = {"align": self.align_budget or self.budget, "instruct": self.instruct_budget or self.budget}
        return {stage: None if spec is None else Budget.parse(spec) for stage, spec in specs.items()}

    def stages(self) -> tuple[str, ...]:
        return STAGES if self.captions else ("instruct",)


# ----------------------------------------------------------------------------------------------------------------
# measuring


def reset_peak_memory() -> None:
    """Resets the peak of this process's resident memory (Linux) and of the CUDA allocator, so each stage reports
    its own peak."""
    import torch

    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float:
    """Peak memory since the last reset, in MiB: of the CUDA allocator when there is a GPU, else of this process's
    resident memory (Linux; elsewhere since the process started)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def evaluate_stage(args: CompareArguments, model_dir: Path, output_dir: Path) -> dict[str, Any]:
    """`minillava eval --benchmark vqa` of `model_dir` (a model, or the LoRA adapter a PEFT stage saves) on
    `args.eval_data`: accuracy (%) overall and per type."""
    from ..chat.terminal import load_chat_model
    from ..eval.run import evaluate_model

    started = time.perf_counter()
    model, processor = load_chat_model(str(model_dir))
    results = evaluate_model(
        model,
        "vqa",
        args.eval_data,
        args.eval_image_folder or args.image_folder,
        output_dir,
        batch_size=args.eval_batch_size,
        processor=processor,
        max_new_tokens=args.max_new_tokens,
        limit=args.eval_limit,
    )
    del model
    metrics = results.get("metrics", {})
    return {
        "accuracy": results["overall"],
        "accuracy_metric": results.get("overall_metric"),
        "per_type": metrics.get("per_question_type", {}),
        "eval_questions": metrics.get("num_questions"),
        "eval_seconds": round(time.perf_counter() - started, 1),
        "eval_results": str(Path(output_dir) / "results.json"),
    }


def train_stage(
    args: CompareArguments, stage: str, model_dir: Path, output_dir: Path, budget: Budget | None
) -> dict[str, Any]:
    """One stage through `minillava sft`'s code path, with the stage's recipe, data and budget; returns its figures."""
    from ..training.recipes import resolve_recipe
    from ..training.sft import make_parser, train

    if stage == "align":
        data, image_folder = args.captions, args.caption_image_folder or args.image_folder
        recipe, extra = args.align_recipe, args.align_args
    else:
        data, image_folder = args.data, args.image_folder
        recipe, extra = args.instruct_recipe, args.instruct_args
    argv = [
        "--config", resolve_recipe(recipe),
        "--stage", stage,
        "--model_name_or_path", str(model_dir),
        "--dataset_name", data,
        "--output_dir", str(output_dir),
        "--seed", str(args.seed),
        "--push_to_hub", "false",
    ]  # fmt: skip
    if image_folder:
        argv += ["--image_folder", image_folder]
    argv += budget.sft_flags() if budget else []
    argv += shlex.split(extra)
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    if budget:
        budget.apply(training_args)
    callbacks = budget.callbacks() if budget else []
    reset_peak_memory()
    started = time.perf_counter()
    trainer, metrics = train(script_args, training_args, model_args, callbacks=callbacks)
    seconds = time.perf_counter() - started
    global_batch = (
        training_args.per_device_train_batch_size
        * training_args.gradient_accumulation_steps
        * max(training_args.world_size, 1)
    )
    parameters = list(trainer.model.parameters())
    return {
        "train_loss": metrics.get("train_loss"),
        "steps": trainer.state.global_step,
        "global_batch_size": global_batch,
        "samples_per_second": metrics.get("train_samples_per_second"),
        "train_seconds": round(seconds, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "loss_curve": [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log],
    }


def build_arch(args: CompareArguments, arch: str, output_dir: Path) -> dict[str, Any]:
    """`minillava build` of `arch` from the shared language model; returns its size figures."""
    from ..training.build import BuildArguments, build

    vision = args.llava_vision if arch == "llava-1.5" else args.minigpt4_vision
    model, _ = build(BuildArguments(arch=arch, vision_model=vision, text_model=args.text_model,
                                    output_dir=str(output_dir), dtype=args.dtype, seed=args.seed))  # fmt: skip
    figures = {
        "image_tokens_per_image": model.config.image_seq_length,
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }
    del model
    return figures


def run_arch(args: CompareArguments, arch: str) -> dict[str, Any]:
    """Build, (evaluate,) then train and evaluate each stage: one architecture's column of results."""
    out = Path(args.output_dir) / arch
    started = time.perf_counter()
    results: dict[str, Any] = build_arch(args, arch, out / "init")
    stages: dict[str, Any] = {}
    if args.eval_before:
        stages["before"] = evaluate_stage(args, out / "init", out / "eval" / "before")
    previous = out / "init"
    for stage in args.stages():
        figures = train_stage(args, stage, previous, out / stage, args.stage_budgets()[stage])
        figures.update(evaluate_stage(args, out / stage, out / "eval" / stage))
        stages[stage] = figures
        previous = out / stage
    results["stages"] = stages
    results["model_dir"] = str(previous)
    results["wall_seconds"] = round(time.perf_counter() - started, 1)
    return results


def compare(args: CompareArguments) -> dict[str, Any]:
    """Runs the comparison; writes `compare.json` and `compare.png` into `args.output_dir`, prints the table and
    returns the results (`{"settings": ..., "archs": {arch: {...}}}`)."""
    archs = args.archs_list()
    budgets = args.stage_budgets()  # bad budgets fail before anything is built
    for path in (args.data, args.eval_data, args.captions):
        if path is not None and Path(path).suffix in (".json", ".jsonl") and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    output_dir = Path(args.output_dir)
    clear_earlier_comparison(output_dir, archs, args.overwrite_output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    settings = {
        **asdict(args),
        "stages": list(args.stages()),
        "budgets": {stage: None if budget is None else str(budget) for stage, budget in budgets.items()},
    }
    results: dict[str, Any] = {"settings": settings, "archs": {}}
    for arch in archs:
        results["archs"][arch] = run_arch(args, arch)
        _write_json(output_dir / RESULTS_NAME, results)  # what is finished survives a later failure
    results["minutes"] = round((time.perf_counter() - started) / 60, 2)
    _write_json(output_dir / RESULTS_NAME, results)
    save_comparison_plot(results, output_dir / PLOT_NAME)
    print_table(results)
    print(f"\n{results['minutes']:.1f} min; results in {output_dir / RESULTS_NAME} and {output_dir / PLOT_NAME}")
    return results


def clear_earlier_comparison(output_dir: Path, archs: list[str], overwrite: bool) -> None:
    """Refuses an `output_dir` that holds an earlier comparison (its answers would be resumed as if they were the new
    models'), unless `overwrite`: then its architecture folders and results go first. Nothing else there is touched."""
    earlier = [output_dir / name for name in (*archs, RESULTS_NAME, PLOT_NAME) if (output_dir / name).exists()]
    if not earlier:
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} holds an earlier comparison ({', '.join(path.name for path in earlier)}): pass "
            "--overwrite_output_dir true to replace it, or choose another --output_dir"
        )
    for path in earlier:
        logger.info("Replacing the earlier %s", path)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _write_json(path: Path, data: Any) -> None:
    partial = path.with_name(f"_{path.name}.tmp")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(CompareArguments, prog="minillava compare", description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return compare(args)


__all__ = [
    "ARCHS",
    "CompareArguments",
    "compare",
    "evaluate_stage",
    "main",
    "parse_archs",
    "peak_memory_mb",
    "reset_peak_memory",
    "train_stage",
]
