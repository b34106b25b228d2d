"""`minillava sft`: one training stage (align or instruct) of a minillava model with TRL's `SFTTrainer`.

Recipes are YAML files for TRL's parser (`--config` takes a path or the name of a shipped recipe, see
`hub_configs/recipes/`); any flag overrides the file. The keys are `trl sft`'s (`SFTConfig`, `ModelConfig`) plus the
script arguments below.

# Stage 1 (align): LLaVA-1.5 on LCS-558K, only the projector trains
```bash
minillava build --preset llava-1.5-7b --output-dir checkpoints/llava-1.5-7b
minillava sft --config llava-1.5-align \
    --model_name_or_path checkpoints/llava-1.5-7b \
    --dataset_name playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \
    --image_folder playground/data/LLaVA-Pretrain/images \
    --output_dir checkpoints/llava-1.5-7b-align
```

# Stage 2 (instruct): LLaVA-1.5 on the 665K mixture, LoRA with the projector in full, pushed to the Hub
```bash
minillava sft --config llava-1.5-instruct-lora \
    --model_name_or_path checkpoints/llava-1.5-7b-align \
    --dataset_name playground/data/llava_v1_5_mix665k.json \
    --image_folder playground/data \
    --output_dir checkpoints/llava-1.5-7b-lora \
    --push_to_hub --hub_model_id your-name/llava-1.5-7b-lora
minillava merge checkpoints/llava-1.5-7b-lora --output-dir checkpoints/llava-1.5-7b-merged
```

# MiniGPT-4 stage 2 on cc_sbu_align, QLoRA, resuming a killed run
```bash
minillava sft --config minigpt4-instruct-qlora \
    --model_name_or_path checkpoints/minigpt4-align \
    --dataset_name cc_sbu_align --output_dir checkpoints/minigpt4-qlora \
    --resume_from_checkpoint true
```

# Stage 2 on 8 GPUs under DeepSpeed ZeRO-3 (the launch configs: `hub_configs/accelerate/`, see `train/distributed.py`)
```bash
minillava sft --launch zero3 --num_processes 8 --config llava-1.5-instruct \
    --model_name_or_path checkpoints/llava-1.5-7b-align --output_dir checkpoints/llava-1.5-7b-instruct
```

# A tiny CPU run
```bash
minillava sft --config tiny-cpu-instruct --model_name_or_path tiny-built \
    --dataset_name data.json --output_dir out --report_to tensorboard
```
"""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, SFTConfig, TrlParser

from ..checkpoints import PARTIAL_PREFIX, last_complete_checkpoint
from ..hub.push import PushError
from .data import DATASET_FORMATS, SkipReport, infer_format, load_sft_dataset
from .distributed import LaunchError, check_processes
from .output_dir import RunLock, check_output_dir
from .recipes import STAGES, check_stage, resolve_recipe


logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(ScriptArguments):
    """`trl sft`'s script arguments (`dataset_name`, `dataset_config`, splits) and the minillava ones."""

    stage: str = field(
        default="instruct",
        metadata={
            "help": "align: train the connector alone (stage 1); instruct: the connector and the language model, in "
            "full or through LoRA / QLoRA (stage 2).",
            "choices": list(STAGES),
        },
    )
    image_folder: str | None = field(
        default=None,
        metadata={"help": "Folder the dataset's image paths are relative to (LLaVA's --image_folder)."},
    )
    allow_images_outside_folder: bool = field(
        default=False,
        metadata={
            "help": "Use image paths that lie outside --image_folder (`../x.png`, absolute paths elsewhere); by "
            "default such samples are skipped and named. Symlinks inside the folder are always followed."
        },
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "llava (conversation or caption JSON), cc_sbu_align (MiniGPT-4's folder) or messages (messages "
            "+ images: a JSON/JSONL file, a save_to_disk folder or a Hub dataset); inferred when not given.",
            "choices": [*DATASET_FORMATS, None],
        },
    )
    strict: bool = field(
        default=False,
        metadata={"help": "Raise on the first bad sample instead of skipping it (and reporting it by id)."},
    )
    tune_vision_tower: bool = field(
        default=False, metadata={"help": "Instruct stage: train the vision tower too (frozen by default)."}
    )
    connector_lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the connector (LLaVA's mm_projector_lr); defaults to learning_rate."},
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={
            "help": "LLaVA's sampler: image and text-only samples in separate batches, samples of similar length "
            "together (transformers' --train_sampling_strategy group_by_length also works: samples carry a length)."
        },
    )
    cache_image_features: str | None = field(
        default=None,
        metadata={
            "help": "Folder of cached image features: while the front end is frozen (MiniGPT-4's ViT + Q-Former, "
            "LLaVA's tower), each image's features are computed once, before training, and read from disk after "
            "(this run's later epochs and later runs); the disk cost is reported first."
        },
    )
    hub_push_retries: int = field(
        default=10,
        metadata={"help": "Attempts after the first when a push meets a transient Hub error (5xx, 429, a dropped "
                  "connection)."},
    )  # fmt: skip
    hub_push_backoff: float = field(
        default=2.0,
        metadata={"help": "Seconds before the first retry of a push, doubled each time (Retry-After when sent)."},
    )
    if "overwrite_output_dir" not in SFTConfig.__dataclass_fields__:  # transformers 5 removed the Trainer's flag
        overwrite_output_dir: bool = field(
            default=False,
            metadata={"help": "Train into an --output_dir that holds another run's results, replacing them."},
        )
    chat_template_name: str | None = field(
        default=None,
        metadata={
            "help": "Chat template the samples are rendered with for training: plain, vicuna_v1, minigpt4_vicuna0, "
            "minigpt4_llama2 or a .jinja file. Defaults to plain (LLaVA's stage-1 format) for align and to the "
            "processor's own template for instruct; the saved processor keeps its own template."
        },
    )


def make_parser() -> TrlParser:
    """TRL's parser over the script arguments, `SFTConfig` and `ModelConfig` (PEFT and quantization flags)."""
    description = (
        f"{__doc__.splitlines()[0]} With --launch CONFIG [--num_processes N] (ddp, zero2, zero3, fsdp2 or a config "
        "file) the run goes through `accelerate launch` on several processes."
    )
    return TrlParser((SFTScriptArguments, SFTConfig, ModelConfig), prog="minillava sft", description=description)


def training_chat_template(name: str | None, stage: str, image_token: str = "<image>") -> str | None:
    """The template the samples are rendered with: `name` (a minillava template or a Jinja file), else `plain` for
    align and None (the processor's own) for instruct."""
    from minillava.processing import get_chat_template

    name = name if name is not None else "plain" if stage == "align" else None
    if name is None:
        return None
    if name.endswith((".jinja", ".j2")) and Path(name).is_file():
        return Path(name).read_text(encoding="utf-8")
    return get_chat_template(name, image_token=image_token)


def _resume_value(value: str | bool | None) -> str | bool | None:
    if isinstance(value, str) and value.lower() in ("true", "last", "latest"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "none", ""):
        return None
    return value


def resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint a run resumes from: `value` when it is a path, the newest complete `checkpoint-N` of
    `output_dir` when it is true (newer incomplete ones are named and skipped; none: a `ValueError`), else None."""
    value = _resume_value(value)
    if value is not True:
        return value
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise ValueError(
            f"No valid checkpoint found in {output_dir} to resume from (no checkpoint-N folder that is complete); "
            "pass a checkpoint folder, or leave out --resume_from_checkpoint to start from the beginning."
        )
    logger.info("Resuming from %s.", checkpoint)
    return str(checkpoint)


def _remove_partial_saves(output_dir: str) -> None:
    for path in sorted(Path(output_dir).glob(f"{PARTIAL_PREFIX}*")):
        logger.warning("Removing %s, a save that did not finish (the run was stopped during it).", path)
        shutil.rmtree(path, ignore_errors=True)


def _quantization_summary(model_args: ModelConfig) -> str | None:
    if model_args.load_in_4bit:
        double = ", double quantization" if model_args.use_bnb_nested_quant else ""
        return f"language model in 4-bit {model_args.bnb_4bit_quant_type.upper()}{double} (bitsandbytes)"
    if model_args.load_in_8bit:
        return "language model in 8-bit (bitsandbytes)"
    return None


def train(
    script_args: SFTScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    train_dataset=None,
    callbacks: list | None = None,
):
    """Trains one stage and saves (and pushes, with `push_to_hub`) the result; returns `(trainer, train metrics)`.

    Args:
        script_args ([`SFTScriptArguments`]): stage, data and the minillava options.
        training_args (`trl.SFTConfig`): the Trainer's arguments. `assistant_only_loss` is always on (the loss is on
            the assistant turns and their end-of-turn token, computed from the chat template's `{% generation %}`
            markers by TRL's vision collator) and `remove_unused_columns` off (sample ids reach the collator).
            `max_length` is checked before training: longer samples are skipped, never truncated. `padding_free` lays
            each batch out without padding and `packing` (strategy `bfd`) fills rows of `max_length` tokens from the
            whole dataset (see [`minillava.train.training.packing`]): TRL itself refuses both for vision datasets.
        model_args (`trl.ModelConfig`): the model (`model_name_or_path`: a built or stage-1 folder, or a Hub id),
            `dtype`, and the LoRA (`use_peft`, `lora_r`, ...) and quantization (`load_in_4bit`, ...) settings.
        train_dataset (`datasets.Dataset`, *optional*): `messages` + `images` rows used instead of
            `script_args.dataset_name`.
        callbacks (`list[TrainerCallback]`, *optional*): extra Trainer callbacks.

    One run owns `output_dir` (a lock file with its pid and host; a second live run is refused), and a folder that
    holds another run's results is refused unless the run resumes (`resume_from_checkpoint`: a path, or true for the
    newest complete checkpoint) or `overwrite_output_dir` is given. A final push that fails after its retries raises
    [`PushError`] once the model is saved locally.
    """
    state = training_args.distributed_state
    check_processes(state.distributed_type.value, state.num_processes)
    resume = _resume_value(training_args.resume_from_checkpoint)
    overwrite = getattr(script_args, "overwrite_output_dir", False) or getattr(
        training_args, "overwrite_output_dir", False
    )
    lock = nullcontext()
    if training_args.should_save:
        check_output_dir(training_args.output_dir, overwrite=overwrite, resume=bool(resume))
        lock = RunLock(training_args.output_dir)
    with lock:
        if training_args.should_save:
            _remove_partial_saves(training_args.output_dir)
        return _train(script_args, training_args, model_args, train_dataset, callbacks)


def _train(script_args, training_args, model_args, train_dataset, callbacks):
    from transformers import AutoConfig, AutoModelForImageTextToText
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    import minillava.modeling  # noqa: F401  (registers the minillava classes with the Auto classes)
    from minillava.processing import MiniLlavaProcessor

    from .data import DataCollatorWithSampleChecks, decode_images, load_image
    from .distributed import keep_used_weight_conversions
    from .feature_cache import (
        CachedFeaturesCollator,
        ImageFeatureCache,
        add_image_hashes,
        check_frozen,
        fill_cache,
        model_fingerprint,
    )
    from .packing import PaddingFreeCollator
    from .recipes import (
        arch_modules,
        freeze_front_end,
        lora_config,
        quantization_config,
        set_trainable,
    )
    from .trainer import MiniLlavaSFTTrainer

    stage = script_args.stage
    check_stage(
        stage,
        use_peft=model_args.use_peft,
        quantized=model_args.load_in_4bit or model_args.load_in_8bit,
        tune_vision_tower=script_args.tune_vision_tower,
    )
    if model_args.model_name_or_path is None:
        raise ValueError(
            "--model_name_or_path is required: a folder from `minillava build`, a stage-1 output or a Hub id."
        )
    if train_dataset is None and script_args.dataset_name is None:
        raise ValueError("--dataset_name is required.")
    if script_args.dataset_streaming:
        raise ValueError("Streaming datasets are not supported: samples are checked before training starts.")
    # The fused LM head of TRL computes the loss from the labels alone (the model's own masking of image tokens is
    # bypassed), so the labels must cover the assistant turns only: TRL's vision collator does that from the
    # template's {% generation %} markers.
    training_args.assistant_only_loss = True
    training_args.remove_unused_columns = False
    # TRL refuses packing and padding-free for vision datasets; minillava's sampler and collator do them.
    packing, padding_free = training_args.packing, training_args.padding_free or training_args.packing
    if packing and training_args.packing_strategy != "bfd":
        raise ValueError(
            f"--packing_strategy {training_args.packing_strategy} would split samples (and their images) across "
            "rows; minillava packs whole samples: use --packing_strategy bfd."
        )
    if packing and script_args.group_by_modality_length:
        raise ValueError("Choose --packing or --group_by_modality_length: packed rows are filled across modalities.")
    training_args.packing = training_args.padding_free = False

    name = model_args.model_name_or_path
    processor = MiniLlavaProcessor.from_pretrained(name, revision=model_args.model_revision)
    chat_template = training_chat_template(script_args.chat_template_name, stage, processor.image_token)

    def read(source, split: str, dataset_format: str | None):
        return load_sft_dataset(
            source,
            processor,
            dataset_format=dataset_format,
            image_folder=script_args.image_folder,
            dataset_config=script_args.dataset_config,
            split=split,
            chat_template=chat_template,
            max_length=training_args.max_length,
            require_image=stage == "align",
            strict=script_args.strict,
            num_proc=training_args.dataset_num_proc,
            allow_images_outside_folder=script_args.allow_images_outside_folder,
        )

    with training_args.main_process_first(desc="reading and checking the dataset"):
        source = script_args.dataset_name if train_dataset is None else train_dataset
        dataset, report = read(source, script_args.dataset_train_split, script_args.dataset_format)
        eval_dataset = None
        if training_args.eval_strategy != "no":
            if train_dataset is not None or infer_format(script_args.dataset_name) != "messages":
                raise ValueError(
                    "Evaluation during training needs a messages dataset (a save_to_disk folder or a Hub dataset) with "
                    f"a {script_args.dataset_test_split!r} split (--dataset_test_split)."
                )
            eval_dataset, _ = read(script_args.dataset_name, script_args.dataset_test_split, "messages")
    skipped_path = Path(training_args.output_dir) / "skipped_samples.json"
    if training_args.should_save and skipped_path.is_file():
        if _resume_value(training_args.resume_from_checkpoint):  # keep the decode-time skips of the killed run
            try:
                report.merge(SkipReport.load(skipped_path))
            except (ValueError, KeyError, TypeError) as error:
                logger.warning("Ignoring the unreadable %s: %s", skipped_path, error)
        else:  # another run's (--overwrite_output_dir)
            skipped_path.unlink()
    if report:
        logger.warning(report.summary())
        if training_args.should_save:
            Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
            report.save(skipped_path)
    else:
        logger.info(report.summary())

    model_type = AutoConfig.from_pretrained(name, revision=model_args.model_revision).model_type
    model_kwargs = {
        "revision": model_args.model_revision,
        "dtype": model_args.dtype,
        "attn_implementation": model_args.attn_implementation,
        "trust_remote_code": training_args.trust_remote_code,
    }
    quantization = quantization_config(model_args, model_type)
    if quantization is not None:
        model_kwargs["quantization_config"] = quantization
    if isinstance(training_args.model_init_kwargs, dict):
        model_kwargs.update(training_args.model_init_kwargs)
    model = AutoModelForImageTextToText.from_pretrained(name, **model_kwargs)
    keep_used_weight_conversions(model)  # saved under the key names it was loaded with, ZeRO-3 included

    peft_config = None
    if model_args.use_peft:
        peft_config = lora_config(model, model_args, tune_vision_tower=script_args.tune_vision_tower)
        modules = arch_modules(model)
        freeze_front_end(model, modules.frozen + (() if script_args.tune_vision_tower else modules.vision_tower))
    else:
        set_trainable(model, stage, tune_vision_tower=script_args.tune_vision_tower)

    collator = DataCollatorForVisionLanguageModeling(
        processor,
        max_length=None,  # every sample was checked against max_length: nothing is ever truncated
        pad_to_multiple_of=None if padding_free else training_args.pad_to_multiple_of,
        assistant_only_loss=True,
        chat_template=chat_template,
    )
    feature_cache = None
    if script_args.cache_image_features:
        if script_args.tune_vision_tower:
            raise ValueError("--cache_image_features needs a frozen vision tower; --tune_vision_tower trains it.")
        with training_args.main_process_first(desc="hashing images"):
            rows = add_image_hashes(dataset.with_format(None), training_args.dataset_num_proc)
        dataset = rows.with_transform(decode_images)
        feature_cache = ImageFeatureCache(
            script_args.cache_image_features, model_fingerprint(model, processor.image_processor)
        )
        collator = CachedFeaturesCollator(collator, feature_cache)
    batching = "padded"
    if padding_free:
        attention = model.config.get_text_config()._attn_implementation or ""
        collator = PaddingFreeCollator(
            collator,
            image_token_id=processor.image_token_id,
            num_image_tokens=processor.num_image_tokens,
            pad_token_id=processor.tokenizer.pad_token_id or processor.tokenizer.eos_token_id,
            max_length=training_args.max_length,
            flash_attention="flash" in attention,
        )
        batching = f"padding-free ({attention} attention)"
        if packing:
            batching = f"packed: rows of {training_args.max_length} tokens, best-fit decreasing, {batching}"
    elif script_args.group_by_modality_length:
        batching = "grouped by modality and length (LLaVA's group_by_modality_length)"
    elif getattr(training_args, "train_sampling_strategy", None) == "group_by_length":
        batching = "grouped by length"
    collator = DataCollatorWithSampleChecks(
        collator,
        strict=script_args.strict,
        report=report,
        report_path=Path(training_args.output_dir) / "skipped_samples.json",
        dataset=dataset,
        seed=training_args.seed,
    )
    trainer = MiniLlavaSFTTrainer(
        model=model,
        args=training_args,
        data_collator=collator,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=callbacks,
        connector_lr=script_args.connector_lr,
        packing=packing,
        group_by_modality_length=script_args.group_by_modality_length,
        hub_push_retries=script_args.hub_push_retries,
        hub_push_backoff=script_args.hub_push_backoff,
        run_info={
            "batching": batching,
            "stage": stage,
            "model_name_or_path": name,
            "dataset_name": script_args.dataset_name if train_dataset is None else "in-memory dataset",
            "dataset_format": script_args.dataset_format or ("messages" if train_dataset is not None else None),
            "num_samples": len(dataset),
            "num_skipped": len(report.skipped),
            "quantization": _quantization_summary(model_args),
            "tune_vision_tower": script_args.tune_vision_tower,
        },
    )
    if trainer.run_info["dataset_format"] is None:
        trainer.run_info["dataset_format"] = infer_format(script_args.dataset_name)
    if feature_cache is not None:
        check_frozen(trainer.model)
        with training_args.main_process_first(desc="caching image features"):
            trainer.run_info["feature_cache"] = fill_cache(feature_cache, rows, trainer.model, processor, load_image)

    result = trainer.train(
        resume_from_checkpoint=resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    trainer.run_info["num_skipped"] = len(collator.skip_report().skipped)  # with those that failed to decode
    trainer.save_loss_curve()  # loss_curve.png next to the model: pushed with it, shown in its card
    if training_args.push_to_hub:
        try:
            trainer.push_to_hub(dataset_name=script_args.dataset_name)  # saves to output_dir, writes the card, pushes
        except Exception as error:
            raise PushError(training_args.output_dir, trainer.hub_model_id, error) from error
        if trainer.failed_pushes:
            logger.warning(
                "%d push(es) during training failed; the final push uploaded everything.", len(trainer.failed_pushes)
            )
    else:
        trainer.save_model(training_args.output_dir)
        trainer.create_model_card()
    return trainer, result.metrics


def main(argv: list[str] | None = None) -> None:
    """`minillava sft --config RECIPE [--flag value ...]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(item == "--launch" or item.startswith("--launch=") for item in argv):
        from .distributed import launch

        sys.exit(launch(argv))
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        index = argv.index("--config") + 1
        argv[index] = resolve_recipe(argv[index])
    script_args, training_args, model_args = make_parser().parse_args_and_config(argv)
    try:
        trainer, _ = train(script_args, training_args, model_args)
    except PushError as error:
        print(f"minillava sft: {error}", file=sys.stderr)
        sys.exit(1)
    except LaunchError as error:
        print(f"minillava sft: {error}", file=sys.stderr)
        sys.exit(2)
    trainer.accelerator.print(f"Saved to {training_args.output_dir}")
    if training_args.push_to_hub:
        trainer.accelerator.print(f"Pushed to the Hub: {trainer.hub_model_id}")
    if hasattr(trainer, "end"):  # transformers >= 5.18: finishes the trackers
        trainer.end()


if __name__ == "__main__":
    main()


__all__ = ["SFTScriptArguments", "main", "make_parser", "resume_checkpoint", "train", "training_chat_template"]
