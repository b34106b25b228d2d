"""Model cards of the folders minillava publishes: training runs (`minillava sft`: full models and LoRA adapters) and
merged models (`minillava merge`). The Hub's metadata is built with `huggingface_hub.ModelCardData`; `base_model` is
always a Hub id, never a local path: a model trained from a local folder is traced to the Hub id that folder came
from (see [`hub_id_of`]), and `base_model` is left out where none is known."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..plots import LOSS_CURVE_NAME
from ..training.tracking import TENSORBOARD_FOLDER


ARCH_NAMES = {"minillava": "llava-1.5", "minillava_minigpt4": "minigpt4"}
FAMILIES = {"minillava": "llava", "minillava_minigpt4": "minigpt4"}
PIPELINE_TAG = "image-text-to-text"
CARD_NAME = "README.md"
# The sections of a training card that a merged model's card quotes from its adapter's card.
TRAINING_SECTIONS = ("Data", "Hyperparameters", "Results")
# A folder of the Hub's cache: .../models--{owner}--{name}/snapshots/{revision}
_SNAPSHOT = re.compile(r"(?:^|/)models--(?P<repo>[^/]+)/snapshots/[^/]+/?$")


# -- provenance: the Hub id a model came from ---------------------------------------------------------------------


def is_hub_id(name: str | os.PathLike | None) -> bool:
    """Whether `name` is a Hub repo id (`owner/name` or `name`) and not a path on this machine."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(str(name))
    except HFValidationError:
        return False
    return True


def _pushed_as(folder: Path) -> str | None:
    """The repo a minillava run pushed `folder` to, from its `training_args.json` (`owner/name` ids only)."""
    try:
        args = json.loads((folder / "training_args.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    repo_id = args.get("hub_model_id") if isinstance(args, dict) and args.get("push_to_hub") else None
    return repo_id if isinstance(repo_id, str) and "/" in repo_id and is_hub_id(repo_id) else None


def hub_id_of(name_or_path: str | os.PathLike | None) -> str | None:
    """The Hub id of a model given by Hub id or local folder, or None when none is known.

    A Hub id is its own; a folder of the Hub's cache (`models--owner--name/snapshots/REVISION`, what
    `snapshot_download` returns) is that repo; a folder that `minillava sft --push_to_hub` pushed is the repo its
    `training_args.json` names. Any other folder (a `minillava build` output, a run that was not pushed) has none.
    """
    if not name_or_path:
        return None
    if is_hub_id(name_or_path):
        return str(name_or_path)
    path = Path(name_or_path)
    if not path.is_dir():
        return None
    for candidate in (path.as_posix(), path.resolve().as_posix()):
        match = _SNAPSHOT.search(candidate)
        if match and "--" in match["repo"]:
            repo_id = match["repo"].replace("--", "/", 1)
            if is_hub_id(repo_id):
                return repo_id
    return _pushed_as(path)


def shown(name: str | os.PathLike | None, what: str = "folder") -> str:
    """How a card names a model or dataset: its Hub id, else the last part of its local path only."""
    hub_id = hub_id_of(name)
    if hub_id is not None:
        return f"`{hub_id}`"
    if not name:
        return "unknown"
    return f"`{Path(name).name}` (a local {what} with no known Hub id)"


# -- metadata and shared sections ---------------------------------------------------------------------------------


def card_metadata(
    config,
    *,
    library_name: str,
    base_model: str | None,
    relation: str,
    tags: list[str] | tuple[str, ...] = (),
    datasets: list[str] | None = None,
) -> ModelCardData:
    """The Hub metadata of a minillava folder: `base_model` (a Hub id, or left out) with its `base_model_relation`
    (`adapter`, `finetune`) and `base_model:{relation}:{id}` tag, `pipeline_tag: image-text-to-text`, and the tags
    `minillava`, the architecture (`llava-1.5`, `minigpt4`) and its family (`llava`, `minigpt4`)."""
    model_type = config.model_type
    names = ["minillava", ARCH_NAMES.get(model_type, model_type), FAMILIES.get(model_type, model_type), *tags]
    if base_model:
        names.append(f"base_model:{relation}:{base_model}")
    return ModelCardData(
        base_model=base_model or None,
        base_model_relation=relation if base_model else None,
        library_name=library_name,
        pipeline_tag=PIPELINE_TAG,
        datasets=datasets or None,
        tags=list(dict.fromkeys(names)),
    )


def make_card(data: ModelCardData, lines: list[str]) -> ModelCard:
    """A `ModelCard` of the metadata `data` and the Markdown body `lines`."""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines).strip() + "\n")


def _component(config) -> str:
    return f"`{config.model_type}`" + (f" from `{name}`" if (name := hub_id_of(config._name_or_path)) else "")


def model_lines(config) -> list[str]:
    """The parts of a minillava model: vision tower, connector, language model (with their Hub ids when known)."""
    lines = [f"- vision tower: {_component(config.vision_config)}"]
    if hasattr(config, "qformer_config"):
        lines.append(
            f"- connector: BLIP-2 Q-Former with {config.num_query_tokens} queries (frozen) + linear projection"
        )
    else:
        lines.append(f"- connector: `{config.projector_type}` projector, vision layer {config.vision_feature_layer}")
    return lines + [
        f"- language model: {_component(config.text_config)}",
        f"- image tokens per image: {config.image_seq_length}",
    ]


def curve_lines(folder: str | os.PathLike) -> list[str]:
    """The loss-curve image and the TensorBoard logs of `folder`, when it holds them."""
    folder, lines = Path(folder), []
    if (folder / LOSS_CURVE_NAME).is_file():
        lines += [f"![Training loss per step]({LOSS_CURVE_NAME})", ""]
    if any((folder / TENSORBOARD_FOLDER).glob("**/events.out.tfevents.*")):
        lines += [f"TensorBoard logs are in `{TENSORBOARD_FOLDER}/` (on the Hub: the *Training metrics* tab).", ""]
    return ["## Training curves", "", *lines] if lines else []


def load_lines(repo_id: str) -> list[str]:
    """How to load and run a full minillava model from `repo_id` with the Auto classes."""
    return [
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}", trust_remote_code=True)',
        f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the '
        'image?"}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(images=[Image.open("image.jpg")], text=[prompt], return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "The code files travel with the model (`trust_remote_code=True`; on transformers 4.57 use "
        "`AutoModelForVision2Seq`). With minillava installed, `trust_remote_code` is not needed.",
    ]


def sections(text: str, names: tuple[str, ...] = TRAINING_SECTIONS) -> dict[str, list[str]]:
    """The `## NAME` sections of a card's Markdown body (their lines, without the heading)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = found.setdefault(line[3:].strip(), []) if line[3:].strip() in names else None
        elif line.startswith("# "):
            current = None
        elif current is not None:
            current.append(line)
    return {name: lines for name, lines in found.items() if any(line.strip() for line in lines)}


# -- the card of a training run -----------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return getattr(value, "value", value)  # transformers' enums (SchedulerType, OptimizerNames) as their names


def _warmup(args) -> str:
    warmup = getattr(args, "warmup_steps", 0) or getattr(args, "warmup_ratio", 0)
    return f"{warmup:g} of the steps" if 0 < warmup < 1 else f"{int(warmup)} steps"


def _final_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                metrics[key] = value
    return metrics


def model_card(
    trainer,
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: str | list[str] | None = None,
    folder: str | os.PathLike | None = None,
) -> ModelCard:
    """The card of a training run of [`MiniLlavaSFTTrainer`] (full model or LoRA adapter) saved in `folder`
    (default `output_dir`): base model, stage, data, hyperparameters, metrics, loss curve, how to load."""
    from accelerate.utils import is_peft_model

    args, info = trainer.args, trainer.run_info
    folder = Path(folder if folder is not None else args.output_dir)
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    config = model.config
    arch = ARCH_NAMES.get(config.model_type, config.model_type)
    is_adapter = is_peft_model(model)
    stage = info.get("stage", "instruct")
    start = info.get("model_name_or_path") or getattr(config, "_name_or_path", None)
    base = hub_id_of(start)
    dataset_name = dataset_name or info.get("dataset_name")
    repo_id = args.hub_model_id or model_name or Path(args.output_dir).name
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    tags = [f"stage-{stage}", "trl", "sft", *tags]
    if is_adapter:
        tags += ["peft", "qlora" if info.get("quantization") else "lora"]
    hub_dataset = dataset_name if isinstance(dataset_name, str) and is_hub_id(dataset_name) else None
    data = card_metadata(
        config,
        library_name="peft" if is_adapter else "transformers",
        base_model=base,
        relation="adapter" if is_adapter else "finetune",
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,
    )

    world_size = args.world_size
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    hyper = {
        "learning rate": args.learning_rate,
        "connector learning rate": trainer.connector_lr or args.learning_rate,
        "batch size": f"{effective} ({args.per_device_train_batch_size} per device x "
        f"{args.gradient_accumulation_steps} accumulation x {world_size} process(es))",
        "length": f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epoch(s)",
        "schedule": f"{_plain(args.lr_scheduler_type)}, warmup {_warmup(args)}",
        "weight decay": args.weight_decay,
        "max length": args.max_length,
        "optimizer": _plain(args.optim),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "gradient checkpointing": args.gradient_checkpointing,
        "batches": info.get("batching", "padded"),
        "seed": args.seed,
    }
    if is_adapter:
        peft_config = model.peft_config["default"]
        hyper.update(
            {
                "LoRA r / alpha / dropout": f"{peft_config.r} / {peft_config.lora_alpha} / {peft_config.lora_dropout}",
                "LoRA targets": f"`{peft_config.target_modules}`",
                "trained in full (modules_to_save)": ", ".join(sorted(peft_config.modules_to_save or [])),
            }
        )
    if info.get("quantization"):
        hyper["quantization"] = info["quantization"]
    trained = {
        "align": "the connector only (vision tower and language model frozen)",
        "instruct": "the connector and the language model"
        + (" (LoRA, connector in full)" if is_adapter else " (full fine-tuning)"),
    }[stage]
    if info.get("tune_vision_tower"):
        trained += ", and the vision tower"

    dataset = "in-memory dataset" if dataset_name == "in-memory dataset" else shown(dataset_name, "dataset")
    starting_point = f"- starting point: {shown(start)}"
    if base is None:
        starting_point += ": `base_model` is left out of the metadata"
    metrics = _final_metrics(trainer.state.log_history)
    lines = [
        f"# {repo_id}",
        "",
        f"A {arch} vision-language model trained with `minillava sft`, stage **{stage}**: "
        f"{trained}, with TRL's `SFTTrainer` (loss on the assistant turns only).",
        "",
        "## Model",
        "",
        starting_point,
        *model_lines(config),
        "",
        "## Data",
        "",
        f"- dataset: {dataset}, format `{info.get('dataset_format')}`",
        f"- samples used: {info.get('num_samples')}, skipped: {info.get('num_skipped', 0)}",
        "",
        "## Hyperparameters",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in hyper.items()],
        "",
        "## Results",
        "",
    ]
    if metrics:
        lines += ["| metric | value |", "|---|---|", *[f"| {k} | {v:.6g} |" for k, v in sorted(metrics.items())]]
    else:
        lines.append("Training has not logged any metric yet.")
    lines += ["", *curve_lines(folder), "## How to load", ""]
    if is_adapter:
        base_ref = base or "BASE_MODEL"
        merge_flag = "" if base else " --base-model BASE_MODEL"
        lines += [
            "A LoRA adapter (the connector is saved in full with it). Merge it into a full model with",
            f"`minillava merge {repo_id} --output-dir merged{merge_flag}`, or load it on its base:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base_ref}", trust_remote_code=True)',
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
            "```",
        ]
        if base is None:
            lines += ["", "`BASE_MODEL`: the model this adapter was trained on (a local folder, not on the Hub)."]
    else:
        lines += load_lines(repo_id)
    return make_card(data, lines)


# -- the card of a merged model -----------------------------------------------------------------------------------


def merged_card(
    config,
    *,
    repo_id: str,
    adapter: str,
    base_model: str,
    base_id: str | None,
    peft_config,
    adapter_card: ModelCard | None,
    dtype: str,
    folder: str | os.PathLike,
) -> ModelCard:
    """The card of a LoRA adapter merged into its base model by `minillava merge`: `base_model` (the Hub id the
    adapter was trained on, when known) as a `finetune`, what was merged, the adapter's training (quoted from its own
    card), the loss curve and how to load."""
    arch = ARCH_NAMES.get(config.model_type, config.model_type)
    adapter_tags = list(getattr(adapter_card.data, "tags", None) or []) if adapter_card is not None else []
    stage = next((tag[len("stage-") :] for tag in adapter_tags if tag.startswith("stage-")), None)
    datasets = getattr(adapter_card.data, "datasets", None) if adapter_card is not None else None
    data = card_metadata(
        config,
        library_name="transformers",
        base_model=base_id,
        relation="finetune",
        tags=[f"stage-{stage}", "merged-lora"] if stage else ["merged-lora"],
        datasets=[datasets] if isinstance(datasets, str) else datasets,
    )
    lora = (
        f"LoRA r {peft_config.r}, alpha {peft_config.lora_alpha}, on `{peft_config.target_modules}`"
        if hasattr(peft_config, "lora_alpha")
        else f"{_plain(peft_config.peft_type)} adapter"
    )
    in_full = ", ".join(sorted(getattr(peft_config, "modules_to_save", None) or []))
    base_line = f"- base model: {shown(base_id or base_model)}"
    if base_id is None:
        base_line += ": `base_model` is left out of the metadata"
    lines = [
        f"# {repo_id}",
        "",
        f"A {arch} vision-language model made by `minillava merge`: a LoRA adapter merged into its base model "
        f"(PEFT's `merge_and_unload`, {dtype} weights). It is a full model: it loads without PEFT.",
        "",
        "## What was merged",
        "",
        f"- adapter: {shown(adapter)} ({lora}" + (f"; trained in full: {in_full})" if in_full else ")"),
        base_line,
    ]
    if stage:
        lines.append(f"- training: `minillava sft`, stage **{stage}**")
    lines += ["", "## Model", "", *model_lines(config), ""]
    quoted = sections(adapter_card.text) if adapter_card is not None else {}
    if quoted:
        lines += ["## Training of the adapter", "", "From the adapter's own card.", ""]
        for name, section in quoted.items():
            lines += [f"### {name}", *section]
    else:
        lines += ["## Training of the adapter", "", "The adapter's card records no training settings.", ""]
    lines += [*curve_lines(folder), "## How to load", "", *load_lines(repo_id)]
    return make_card(data, lines)


__all__ = [
    "ARCH_NAMES",
    "CARD_NAME",
    "card_metadata",
    "curve_lines",
    "hub_id_of",
    "is_hub_id",
    "load_lines",
    "make_card",
    "merged_card",
    "model_card",
    "model_lines",
    "sections",
    "shown",
]
