"""Shared pieces of the training tests: tiny built models, small datasets on disk, and a one-call `minillava sft`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from tiny import make_image, save_parts

from minillava.train.training.build import BuildArguments, build
from minillava.train.training.recipes import resolve_recipe
from minillava.train.training.sft import make_parser, train


ARCHS = {"llava-1.5": ("clip", "llama"), "minigpt4": ("blip2", "llama")}
ANSWERS = ["A red circle.", "A small green square.", "Two blue triangles.", "yes"]


def build_tiny_models(folder: Path) -> dict[str, tuple[Path, object]]:
    """Both architectures built from tiny random parts: arch -> (folder, processor)."""
    parts = save_parts(folder / "parts")
    built = {}
    for arch, (vision, text) in ARCHS.items():
        out = folder / arch
        _, processor = build(
            BuildArguments(arch=arch, vision_model=parts[vision], text_model=parts[text], output_dir=str(out))
        )
        built[arch] = (out, processor)
    return built


def llava_record(index: int, image: str | None = "auto", question: str = "<image>\nWhat is in the image?") -> dict:
    record = {"id": f"sample-{index}"}
    if image is not None:
        record["image"] = f"{index}.png" if image == "auto" else image
    record["conversations"] = [
        {"from": "human", "value": question},
        {"from": "gpt", "value": ANSWERS[index % len(ANSWERS)]},
    ]
    return record


def write_llava_dataset(folder: Path, num_samples: int = 8, records: list[dict] | None = None) -> tuple[Path, Path]:
    """A LLaVA conversation JSON (one record per sample, `indent=1`) and its image folder of PNGs."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = records if records is not None else [llava_record(i) for i in range(num_samples)]
    for index, record in enumerate(records):
        if re.fullmatch(r"\d+\.png", str(record.get("image"))) and not (images / record["image"]).exists():
            make_image(index, size=(24 + index, 20)).save(images / record["image"])
    path = folder / "data.json"
    path.write_text(json.dumps(records, indent=1))
    return path, images


def record_line(path: Path, sample_id: str) -> int:
    """The line a record of a file written by `write_llava_dataset` starts on (its `{`)."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, start=1) if f'"id": "{sample_id}"' in line) - 1


def run_sft(recipe: str, *flags: str, callbacks: list | None = None, **options):
    """`minillava sft --config RECIPE FLAGS... --OPTION VALUE...` in this process: returns `(trainer, metrics)`."""
    flags = [*flags, *(item for key, value in options.items() for item in (f"--{key}", str(value)))]
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        ["--config", resolve_recipe(recipe), *flags]
    )
    return train(script_args, training_args, model_args, callbacks=callbacks)


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def image_inputs(processor, seed: int = 0, question: str = "What is in the image?") -> dict:
    """Processor inputs of one image question, for comparing logits."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=[make_image(seed)], text=[prompt], return_tensors="pt")


# Our package's import names, blocked where a test runs code "on a machine without minillava".
MINILLAVA_MODULES = ("minillava", "modeling_minillava", "processing", "train")


def env_without_minillava(workdir: Path) -> dict[str, str]:
    """The environment of a subprocess in which minillava cannot be imported, nor in any Python process it starts
    (e.g. the training process of `trl sft`, which `accelerate launch` starts): a `sitecustomize` on `PYTHONPATH`
    blocks our import names. The Hub is offline; remote code and datasets are cached under `workdir`."""
    blocker = workdir / "without-minillava"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "sitecustomize.py").write_text(
        f"import sys\n\nfor name in {MINILLAVA_MODULES!r}:\n    sys.modules[name] = None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(blocker),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_MODULES_CACHE=str(workdir / "modules"),
        HF_DATASETS_CACHE=str(workdir / "datasets-cache"),
        TOKENIZERS_PARALLELISM="false",
    )
    return env
