"""`minillava demo`: both architectures, both stages, offline, on a synthetic visual-QA world, with an evaluation.

```bash
minillava demo                       # ~10 min on 2 CPU cores; writes minillava-demo/results.json and results.png
minillava demo --quick --output_dir /tmp/demo
```

For each architecture the demo composes a model from small pretrained parts (built reproducibly on first use, see
`minillava.train.demo.components`), evaluates it, trains stage 1 (align: the connector alone, on captions) and stage 2
(instruct: connector + LM, on single-word questions with LLaVA-1.5's response-format prompt) with the same code path
as `minillava sft`, and evaluates after each stage on held-out scenes, half of them with shape and colour pairs never
seen in training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm


logger = logging.getLogger(__name__)

ARCHS = {"llava-1.5": "clip_vision", "minigpt4": "blip2"}
STAGES = ("align", "instruct")


@dataclass
class DemoArguments:
    """What `minillava demo` runs."""

    output_dir: str = field(default="minillava-demo", metadata={"help": "Where models, results.json and plots go."})
    quick: bool = field(
        default=False, metadata={"help": "Less training and evaluation (under 3 minutes), for smoke tests."}
    )
    components_dir: str | None = field(
        default=None, metadata={"help": "Cache of the pretrained tiny parts (default: ~/.cache/minillava/components)."}
    )
    archs: str = field(default="llava-1.5,minigpt4", metadata={"help": "Comma-separated architectures to run."})
    seed: int = field(default=0, metadata={"help": "Seed of the data and of training."})


@dataclass
class DemoSizes:
    """How much data and training each run gets."""

    caption_images: int
    vqa_images: int
    eval_images: int
    align_epochs: float
    instruct_epochs: float


SIZES = {
    # full: ~300 align steps and ~600 instruct steps of 16 samples (vqa_samples gives ~3.5 questions per image)
    False: DemoSizes(caption_images=4800, vqa_images=1400, eval_images=100, align_epochs=1, instruct_epochs=2),
    True: DemoSizes(caption_images=800, vqa_images=400, eval_images=30, align_epochs=1, instruct_epochs=1),
}


def _reset_peak_memory() -> None:
    """Resets the process's peak resident memory (Linux), so each stage reports its own peak."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb() -> float:
    """Peak resident memory of this process since the last reset (Linux; elsewhere since its start), in MiB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def evaluate(model_dir: str | Path, examples: list, batch_size: int = 32, desc: str = "evaluate") -> dict[str, float]:
    """Exact-match accuracy of greedy single-word answers on `(image, question, answer)` triples."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import minillava.modeling  # noqa: F401  (registers the Auto classes)

    from .world import vqa_accuracy

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    predictions = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
        batch = examples[start : start + batch_size]
        prompts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                add_generation_prompt=True,
            )
            for _, question, _ in batch
        ]
        inputs = processor(images=[[image] for image, _, _ in batch], text=prompts, padding=True, return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        predictions += processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return vqa_accuracy(predictions, [answer for _, _, answer in examples])


def run_stage(stage: str, model_dir: Path, output_dir: Path, samples: list[dict], epochs: float, seed: int) -> dict:
    """Trains one stage through `minillava sft`'s code path (recipe `demo-<stage>`); returns its figures."""
    from datasets import Dataset

    from ..training.recipes import resolve_recipe
    from ..training.sft import make_parser, train

    script_args, training_args, model_args = make_parser().parse_args_and_config(
        [
            "--config", resolve_recipe(f"demo-{stage}"),
            "--model_name_or_path", str(model_dir),
            "--output_dir", str(output_dir),
            "--num_train_epochs", str(epochs),
            "--seed", str(seed),
        ]
    )  # fmt: skip
    _reset_peak_memory()
    started = time.perf_counter()
    trainer, metrics = train(script_args, training_args, model_args, train_dataset=Dataset.from_list(samples))
    return {
        "train_loss": metrics.get("train_loss"),
        "samples_per_second": metrics.get("train_samples_per_second"),
        "train_seconds": round(time.perf_counter() - started, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "loss_curve": [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log],
    }


def run_arch(arch: str, parts: dict[str, Path], sizes: DemoSizes, args: DemoArguments) -> dict:
    """Build, evaluate, align, evaluate, instruct, evaluate: one architecture's row of results."""
    from ..training.build import BuildArguments, build
    from .world import caption_samples, evaluation_set, vqa_samples

    out = Path(args.output_dir) / arch
    examples = evaluation_set(sizes.eval_images, split="test", seed=args.seed)
    build(BuildArguments(arch=arch, vision_model=str(parts[ARCHS[arch]]), text_model=str(parts["lm"]),
                         output_dir=str(out / "init"), seed=args.seed))  # fmt: skip
    results = {"before": evaluate(out / "init", examples, desc=f"{arch} before training")}
    data = {
        "align": caption_samples(sizes.caption_images, split="train", seed=args.seed),
        "instruct": vqa_samples(sizes.vqa_images, split="train", seed=args.seed),
    }
    epochs = {"align": sizes.align_epochs, "instruct": sizes.instruct_epochs}
    previous = out / "init"
    for stage in STAGES:
        figures = run_stage(stage, previous, out / stage, data[stage], epochs[stage], args.seed)
        figures.update(evaluate(out / stage, examples, desc=f"{arch} after {stage}"))
        results[stage] = figures
        previous = out / stage
    return results


def print_table(results: dict) -> None:
    header = f"{'arch':<10} {'stage':<9} {'accuracy':>8} {'loss':>7} {'samples/s':>9} {'peak MiB':>9}"
    print(header + "\n" + "-" * len(header))
    for arch, rows in results.items():
        for stage in ("before", *STAGES):
            row = rows[stage]
            loss = f"{row['train_loss']:.3f}" if row.get("train_loss") is not None else "-"
            speed = f"{row['samples_per_second']:.1f}" if row.get("samples_per_second") else "-"
            memory = f"{row['peak_memory_mb']:.0f}" if row.get("peak_memory_mb") else "-"
            print(f"{arch:<10} {stage:<9} {row['accuracy']:>8.3f} {loss:>7} {speed:>9} {memory:>9}")


def plot(results: dict, path: Path) -> None:
    """Accuracy per stage and the loss curves, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(11, 4))
    stages = ("before", *STAGES)
    width = 0.8 / max(len(results), 1)
    for i, (arch, rows) in enumerate(results.items()):
        xs = [s + i * width for s in range(len(stages))]
        bars.bar(xs, [rows[s]["accuracy"] for s in stages], width=width, label=arch)
        for stage in STAGES:
            steps, losses = zip(*rows[stage]["loss_curve"], strict=True) if rows[stage]["loss_curve"] else ((), ())
            curves.plot(steps, losses, label=f"{arch} {stage}")
    bars.set_xticks([s + width * (len(results) - 1) / 2 for s in range(len(stages))], stages)
    bars.set_ylim(0, 1)
    bars.set_ylabel("held-out accuracy")
    bars.set_title("Single-word VQA accuracy per stage")
    bars.legend()
    curves.set_xlabel("step")
    curves.set_ylabel("training loss")
    curves.set_yscale("log")
    curves.set_title("Loss curves")
    curves.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo(args: DemoArguments) -> dict:
    """Runs the demo and writes `results.json` and `results.png` into `args.output_dir`."""
    from .components import build_all

    sizes = SIZES[args.quick]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts = build_all(args.components_dir)
    results = {}
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        if arch not in ARCHS:
            raise ValueError(f"Unknown arch {arch!r}; the demo runs {', '.join(ARCHS)}")
        results[arch] = run_arch(arch, parts, sizes, args)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, output_dir / "results.png")
    print_table(results)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{minutes:.1f} min; results in {output_dir / 'results.json'} and {output_dir / 'results.png'}")
    (output_dir / "run.json").write_text(json.dumps({**asdict(args), "minutes": round(minutes, 2)}, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DemoArguments, prog="minillava demo").parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return demo(args)


__all__ = ["DemoArguments", "demo", "evaluate", "main"]
