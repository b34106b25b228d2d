"""`minillava demo`: `minillava compare` on the embedded synthetic visual-QA world, offline, on the CPU.

```bash
minillava demo                       # ~15 min on 2 CPU cores; writes minillava-demo/compare.json and compare.png
minillava demo --quick --output_dir /tmp/demo
```

The world's captions (stage 1), single-word questions (stage 2) and held-out questions (half of them about shape and
colour pairs never seen in training, each with its type: colour, shape, count, position) are written as LLaVA
conversation JSON and PNGs under `OUTPUT_DIR/data`; both architectures are built from the same small pretrained
parts (built reproducibly on first use, see [`minillava.train.demo.components`]) and compared on those files with
the `demo-align` / `demo-instruct` recipes, exactly as `minillava compare` runs on anyone's data.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..compare.run import ARCHS, CompareArguments, compare, parse_archs


logger = logging.getLogger(__name__)


@dataclass
class DemoArguments:
    """What `minillava demo` runs."""

    output_dir: str = field(
        default="minillava-demo", metadata={"help": "Where the data, models, compare.json and compare.png go."}
    )
    quick: bool = field(
        default=False, metadata={"help": "Less training and evaluation (under 3 minutes), for smoke tests."}
    )
    components_dir: str | None = field(
        default=None, metadata={"help": "Cache of the pretrained tiny parts (default: ~/.cache/minillava/components)."}
    )
    archs: str = field(default=",".join(ARCHS), metadata={"help": "Comma-separated architectures to run."})
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


def write_world(sizes: DemoSizes, output_dir: Path, seed: int) -> dict[str, Path]:
    """The demo's captions, questions and held-out questions as LLaVA conversation JSON, sharing one image folder."""
    from .world import caption_samples, evaluation_samples, vqa_samples, write_llava_json

    sets = {
        "captions": caption_samples(sizes.caption_images, split="train", seed=seed),
        "instruct": vqa_samples(sizes.vqa_images, split="train", seed=seed),
        "eval": evaluation_samples(sizes.eval_images, split="test", seed=seed),
    }
    files = {name: write_llava_json(samples, output_dir, name=name)[0] for name, samples in sets.items()}
    files["images"] = output_dir / "images"
    return files


def compare_arguments(args: DemoArguments, parts: dict[str, Path], files: dict[str, Path]) -> CompareArguments:
    """The `minillava compare` run that the demo is."""
    sizes = SIZES[args.quick]
    return CompareArguments(
        data=str(files["instruct"]),
        eval_data=str(files["eval"]),
        captions=str(files["captions"]),
        image_folder=str(files["images"]),
        text_model=str(parts["lm"]),
        llava_vision=str(parts["clip_vision"]),
        minigpt4_vision=str(parts["blip2"]),
        output_dir=args.output_dir,
        archs=args.archs,
        align_budget=f"{sizes.align_epochs:g}epochs",
        instruct_budget=f"{sizes.instruct_epochs:g}epochs",
        align_recipe="demo-align",
        instruct_recipe="demo-instruct",
        seed=args.seed,
        max_new_tokens=8,
        overwrite_output_dir=True,  # a rerun of the demo replaces the earlier one
    )


def demo(args: DemoArguments) -> dict[str, Any]:
    """Writes the world's data, builds the pretrained parts on first use, and runs `minillava compare` on them;
    returns its results."""
    from .components import build_all

    started = time.perf_counter()
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    parse_archs(args.archs)  # before anything is written
    files = write_world(SIZES[args.quick], output_dir / "data", args.seed)
    parts = build_all(args.components_dir)
    results = compare(compare_arguments(args, parts, files))
    minutes = (time.perf_counter() - started) / 60
    (output_dir / "run.json").write_text(json.dumps({**asdict(args), "minutes": round(minutes, 2)}, indent=2) + "\n")
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(DemoArguments, prog="minillava demo").parse_args_into_dataclasses(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return demo(args)


__all__ = ["DemoArguments", "compare_arguments", "demo", "main", "write_world"]
