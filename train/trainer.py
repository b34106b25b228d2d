"""TRL's SFTTrainer for minillava models: a connector learning rate, self-contained saves and pushes, a model card."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader
from transformers.trainer_utils import seed_worker
from trl import SFTTrainer

from minillava.modeling import MiniVLMForConditionalGeneration
from minillava.processing import MiniLlavaProcessor
from minillava.train.build import save
from minillava.train.packing import ModalityLengthGroupedSampler, PackedBatchSampler
from minillava.train.recipes import arch_modules


TRAINING_ARGS_NAME = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME
ARCH_NAMES = {"minillava": "llava-1.5", "minillava_minigpt4": "minigpt4"}


class MiniLlavaSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] with what a minillava run needs on top:

    - `connector_lr`: a learning rate of its own for the connector (LLaVA's `--mm_projector_lr`);
    - every full-model save (final or checkpoint) goes through [`minillava.train.build.save`]: safetensors weights,
      processor, chat template and the code files, so each saved folder loads with `trust_remote_code=True`;
    - pushes during training also carry the code files (the Trainer only copies weights and configs);
    - a model card with the base components, stage, data, hyperparameters, final metrics and how to load;
    - batches packed from the whole dataset (`packing`) or grouped by modality and length, from the dataset's
      `length` and `num_images` columns (see [`minillava.train.packing`]).

    Args:
        connector_lr (`float`, *optional*):
            Learning rate of the connector's parameters; the others use `args.learning_rate`.
        packing (`bool`, *optional*, defaults to `False`):
            Batches of `per_device_train_batch_size` rows of at most `args.max_length` tokens, filled by best-fit
            decreasing ([`PackedBatchSampler`]); the data collator must lay them out without padding
            ([`PaddingFreeCollator`]).
        group_by_modality_length (`bool`, *optional*, defaults to `False`):
            LLaVA's sampler: image and text-only samples in separate batches, similar lengths together.
        run_info (`dict`, *optional*):
            What the model card reports about the run: `stage`, `model_name_or_path`, `dataset_name`,
            `dataset_format`, `num_samples`, `num_skipped`, `quantization`, `tune_vision_tower`.
        *args, **kwargs: as for [`~trl.SFTTrainer`].
    """

    def __init__(
        self,
        *args,
        connector_lr: float | None = None,
        run_info: dict[str, Any] | None = None,
        packing: bool = False,
        group_by_modality_length: bool = False,
        **kwargs,
    ):
        self.connector_lr = connector_lr
        self.run_info = dict(run_info or {})
        self.packing = packing
        self.group_by_modality_length = group_by_modality_length
        if packing and group_by_modality_length:
            raise ValueError("Choose packing or group_by_modality_length: packed rows are filled across modalities.")
        super().__init__(*args, **kwargs)
        if packing and self.args.max_length is None:
            raise ValueError("Packing needs max_length: it is the number of tokens of a packed row.")

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.group_by_modality_length:
            return ModalityLengthGroupedSampler(
                dataset["length"],
                [count > 0 for count in dataset["num_images"]],
                batch_size=self.args.per_device_train_batch_size,
                seed=self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    def get_train_dataloader(self) -> DataLoader:
        """The Trainer's data loader; with `packing`, over the batches of a [`PackedBatchSampler`]."""
        if not self.packing:
            return super().get_train_dataloader()
        sampler = PackedBatchSampler(
            self.train_dataset["length"],
            max_length=self.args.max_length,
            rows_per_batch=self.args.per_device_train_batch_size,
            seed=self.args.seed,
            drop_last=self.args.dataloader_drop_last,
        )
        workers = self.args.dataloader_num_workers
        dataloader = DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index),
        )
        return self.accelerator.prepare(dataloader)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the connector's parameters in groups of their own at `connector_lr`."""
        if self.optimizer is not None or self.connector_lr is None:
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        opt_model = self.model if model is None else model
        names = [name.rsplit(".", 1)[-1] for name in arch_modules(opt_model.config.model_type).connector]
        connector = {
            id(param)
            for name, param in opt_model.named_parameters()
            if param.requires_grad and any(f".{short}." in f".{name}." for short in names)
        }
        if not connector:
            raise ValueError(f"--connector_lr is set but no trainable parameter belongs to the connector ({names}).")
        groups = []
        for group in optimizer.param_groups:
            params = [param for param in group["params"] if id(param) in connector]
            if params:
                group["params"] = [param for param in group["params"] if id(param) not in connector]
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": params})
        optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
        for group in groups:
            optimizer.add_param_group({**group, "lr": self.connector_lr})
        return optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # On resume the Trainer loads an adapter with PEFT's `load_adapter`, which upcasts it to fp32, while TRL
        # trains the adapter of a quantized model in bf16: keep the dtypes the run started with, so that a resumed
        # QLoRA run continues exactly as the uninterrupted one.
        target = self.model if model is None else model
        dtypes = {name: param.dtype for name, param in target.named_parameters() if param.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        full_model = isinstance(model, MiniVLMForConditionalGeneration) and not is_peft_model(model)
        if (
            full_model
            and state_dict is None
            and isinstance(self.processing_class, MiniLlavaProcessor)
            and not self.is_distributed_loading_by_transformers
        ):
            if not self.args.should_save:
                return
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            save(model, self.processing_class, output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            return
        super()._save(output_dir, state_dict)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer copies weights and configs from the checkpoint to `output_dir` before uploading it; the code
        # files must go too, or the pushed repo would not load with trust_remote_code.
        if self.is_world_process_zero():
            for code_file in Path(checkpoint_folder).glob("*.py"):
                shutil.copy(code_file, Path(self.args.output_dir) / code_file.name)
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(
        self,
        model_name: str | None = None,
        dataset_name: str | None = None,
        tags: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Writes `README.md` in `output_dir`: base components, stage, data, hyperparameters, metrics, usage."""
        if not self.is_world_process_zero():
            return
        Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
        card = model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)
        (Path(self.args.output_dir) / "README.md").write_text(card, encoding="utf-8")


def _is_hub_id(name: str | None) -> bool:
    return bool(name) and not os.path.exists(name) and name.count("/") <= 1 and not name.startswith((".", "/"))


def _component(config) -> str:
    name = getattr(config, "_name_or_path", "") or ""
    return f"`{config.model_type}`" + (f" from `{name}`" if name else "")


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
    trainer: MiniLlavaSFTTrainer,
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: str | list[str] | None = None,
) -> str:
    """The model card of a training run (Markdown with the Hub's YAML metadata)."""
    args, info = trainer.args, trainer.run_info
    model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    config = model.config
    arch = ARCH_NAMES.get(config.model_type, config.model_type)
    is_adapter = is_peft_model(model)
    stage = info.get("stage", "instruct")
    base = info.get("model_name_or_path") or getattr(config, "_name_or_path", None)
    dataset_name = dataset_name or info.get("dataset_name")
    repo_id = args.hub_model_id or model_name or Path(args.output_dir).name
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    tags = list(dict.fromkeys(["minillava", arch, f"stage-{stage}", "trl", "sft", *tags]))
    if is_adapter:
        tags.append("qlora" if info.get("quantization") else "lora")

    front = ["---", f"library_name: {'peft' if is_adapter else 'transformers'}", "pipeline_tag: image-text-to-text"]
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    if isinstance(dataset_name, str) and _is_hub_id(dataset_name):
        front += ["datasets:", f"- {dataset_name}"]
    front += ["tags:", *[f"- {tag}" for tag in tags], "---"]

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

    metrics = _final_metrics(trainer.state.log_history)
    lines = [
        *front,
        "",
        f"# {repo_id}",
        "",
        f"A {arch} vision-language model trained with `minillava sft`, stage **{stage}**: "
        f"{trained}, with TRL's `SFTTrainer` (loss on the assistant turns only).",
        "",
        "## Model",
        "",
        f"- starting point: `{base}`",
        f"- vision tower: {_component(config.vision_config)}",
    ]
    if hasattr(config, "qformer_config"):
        lines.append(
            f"- connector: BLIP-2 Q-Former with {config.num_query_tokens} queries (frozen) + linear projection"
        )
    else:
        lines.append(f"- connector: `{config.projector_type}` projector, vision layer {config.vision_feature_layer}")
    lines += [
        f"- language model: {_component(config.text_config)}",
        f"- image tokens per image: {config.image_seq_length}",
        "",
        "## Data",
        "",
        f"- dataset: `{dataset_name}` (format `{info.get('dataset_format')}`)",
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
    lines += ["", "## How to load", ""]
    if is_adapter:
        lines += [
            "A LoRA adapter (the connector is saved in full with it). Merge it into a full model with",
            f"`minillava merge {repo_id} --output-dir merged`, or load it on its base:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'base = AutoModelForImageTextToText.from_pretrained("{base}", trust_remote_code=True)',
            f'model = PeftModel.from_pretrained(base, "{repo_id}")',
            f'processor = AutoProcessor.from_pretrained("{repo_id}", trust_remote_code=True)',
            "```",
        ]
    else:
        lines += [
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
            "With minillava installed, `trust_remote_code` is not needed.",
        ]
    return "\n".join(lines) + "\n"


__all__ = ["MiniLlavaSFTTrainer", "model_card"]
