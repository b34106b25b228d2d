"""Training and generation speed of minillava against transformers' own `LlavaForConditionalGeneration` trained
through TRL's `SFTTrainer` and its vision collator: same weights, same data, same seed, rounds interleaved.

```bash
python benchmarks/train_speed.py                 # ~15 min on 2 CPU cores; writes benchmark-results/train_speed.{json,png}
python benchmarks/train_speed.py --quick         # ~3 min, smaller data and fewer rounds (a smoke test)
```

What runs (every training run in a subprocess of its own, so each peak memory is its own):

- `native`: the model converted to llava-hf (`minillava convert --to llava-hf`), `LlavaForConditionalGeneration`, TRL's
  `SFTTrainer` with its own `DataCollatorForVisionLanguageModeling` (assistant-only loss, random batches);
- `padded`, `grouped`, `padding_free`, `packed`: `minillava sft`'s `train()` on the same rows, with random batches,
  `--group_by_modality_length`, `--padding_free` and `--packing` (best-fit decreasing, rows of `max_length` tokens);
- `minigpt4`: MiniGPT-4 with the same language model, padded, for the step time of the Q-Former front end;
- `minigpt4_cached`: the same with `--cache_image_features` over two epochs, against two uncached epochs;
- greedy generation, minillava against the native class, batch 1 and batch 8 (in this process).

The data is shaped like LLaVA-1.5's `llava_v1_5_mix665k.json`: mostly multi-turn short-answer VQA, long conversations
and detailed descriptions, text-only ShareGPT-like conversations, and a few two-image samples; lengths vary from tens
to hundreds of tokens. It also prints the vision share of a training step at the published 7B shapes, from FLOPs,
which is where caching the frozen front end pays.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


CONFIGS = ("native", "padded", "grouped", "padding_free", "packed")
EXTRA_CONFIGS = ("minigpt4", "minigpt4_uncached_2ep", "minigpt4_cached_2ep")
IMAGE_SIZE = 64
PAD_TOKEN_ID = 3  # `<pad>` of minillava.train.demo.components.build_tokenizer: no sample holds it, every pad is one
PATCH_SIZE = 8


@dataclass
class Sizes:
    num_samples: int
    rounds: int
    batch_size: int = 8
    packed_rows: int = 3  # packed batches: 3 rows of max_length tokens, about the real tokens of 8 samples
    max_length: int = 512
    generation_repeats: int = 3
    new_tokens: int = 32


SIZES = {False: Sizes(num_samples=320, rounds=2), True: Sizes(num_samples=64, rounds=1, generation_repeats=1)}


# --------------------------------------------------------------------------------------------------------------------
# models and data


def make_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Random parts at a small CPU shape (a 4-layer 256-wide Llama, a 4-layer CLIP at 64 px, a BLIP-2 front end with
    32 queries), both architectures built from them with `minillava build`, and the LLaVA one converted to llava-hf."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        BlipImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlamaConfig,
        LlamaForCausalLM,
        OPTConfig,
    )

    from minillava.train.conversion import convert_to_llava_hf
    from minillava.train.demo.components import build_tokenizer
    from minillava.train.training.build import BuildArguments, build

    torch.manual_seed(seed)
    parts = folder / "parts"
    tokenizer = build_tokenizer()
    lm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=256,
            intermediate_size=688,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=1024,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=False,
        )
    )
    lm.save_pretrained(parts / "lm")
    tokenizer.save_pretrained(parts / "lm")
    vision = {"image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "hidden_size": 128, "intermediate_size": 512}
    CLIPVisionModel(CLIPVisionConfig(**vision, num_hidden_layers=4, num_attention_heads=4)).save_pretrained(
        parts / "clip"
    )
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE).save_pretrained(parts / "clip")
    blip2 = Blip2ForConditionalGeneration(
        Blip2Config(
            vision_config={**vision, "num_hidden_layers": 4, "num_attention_heads": 4},
            qformer_config={
                "hidden_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 512,
                "encoder_hidden_size": 128,
                "vocab_size": 99,
            },
            text_config=OPTConfig(
                vocab_size=99,
                hidden_size=16,
                num_hidden_layers=1,
                ffn_dim=32,
                num_attention_heads=2,
                word_embed_proj_dim=16,
            ).to_dict(),  # fmt: skip
            num_query_tokens=32,
        )
    )
    with torch.no_grad():
        blip2.query_tokens.normal_(std=0.02)
    blip2.save_pretrained(parts / "blip2")
    BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(parts / "blip2")

    models = {}
    for arch, vision_part in (("llava-1.5", "clip"), ("minigpt4", "blip2")):
        models[arch] = folder / arch
        build(
            BuildArguments(
                arch=arch, vision_model=str(parts / vision_part), text_model=str(parts / "lm"),
                output_dir=str(models[arch]), seed=seed,
            )
        )  # fmt: skip
    models["llava-hf"] = folder / "llava-hf"
    convert_to_llava_hf(str(models["llava-1.5"]), str(models["llava-hf"]))
    return models


def _words(rng: random.Random, vocabulary: list[str], low: int, high: int) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(low, high)))


def llava_665k_shaped(num_samples: int, seed: int = 0) -> list[dict]:
    """`messages` + `images` samples with the mix of LLaVA-1.5's instruction data, at a small scale:

    45% short-answer VQA (1-6 questions about one image, single-word answers: VQAv2, GQA, OCR-VQA, TextVQA),
    25% conversations (2-4 turns of sentences: LLaVA-Instruct conversations and reasoning), 10% detailed
    descriptions (one long answer), 15% text-only multi-turn conversations (ShareGPT), 5% two-image questions.
    With 64 image tokens an image, samples are ~70 to ~490 tokens, ~230 on average: under half of the 512-token
    `max_length`, as LLaVA-1.5's samples (576 image tokens and a few hundred of text) are of its 2048."""
    from PIL import Image

    from minillava.train.demo.world import vocabulary

    rng = random.Random(seed)
    words = [word for word in vocabulary() if word.isalpha()]

    def image() -> Image.Image:
        colour = tuple(rng.randrange(256) for _ in range(3))
        width, height = rng.randint(40, 96), rng.randint(40, 96)
        return Image.new("RGB", (width, height), colour)

    def user(text: str, images: int = 0) -> dict:
        return {"role": "user", "content": [*([{"type": "image"}] * images), {"type": "text", "text": text}]}

    def assistant(text: str) -> dict:
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    samples = []
    for _ in range(num_samples):
        kind = rng.choices(["vqa", "conversation", "detail", "text", "two_images"], [45, 25, 10, 15, 5])[0]
        if kind == "vqa":
            turns = [(_words(rng, words, 4, 10) + "? Answer the question using a single word or phrase.",
                      rng.choice(words)) for _ in range(rng.randint(1, 6))]  # fmt: skip
        elif kind == "conversation":
            turns = [(_words(rng, words, 6, 16) + "?", _words(rng, words, 12, 30)) for _ in range(rng.randint(2, 4))]
        elif kind == "detail":
            turns = [("Describe the image in detail.", _words(rng, words, 30, 80))]
        elif kind == "text":
            turns = [(_words(rng, words, 5, 25), _words(rng, words, 10, 50)) for _ in range(rng.randint(1, 4))]
        else:
            turns = [("What differs between the two images?", _words(rng, words, 8, 30))]
        num_images = {"text": 0, "two_images": 2}.get(kind, 1)
        messages = []
        for turn, (question, answer) in enumerate(turns):
            messages += [user(question, num_images if turn == 0 else 0), assistant(answer)]
        samples.append({"messages": messages, "images": [image() for _ in range(num_images)], "kind": kind})
    return samples


def dataset_of(samples: list[dict]):
    from datasets import Dataset, Image, Sequence

    rows = {"messages": [s["messages"] for s in samples], "images": [s["images"] for s in samples]}
    dataset = Dataset.from_dict(rows)
    return dataset.cast_column("images", Sequence(Image()))


# --------------------------------------------------------------------------------------------------------------------
# one training run (a subprocess)


class Meter:
    """A Trainer callback: peak resident memory of training (reset when it begins), tokens fed to the model (from a
    forward pre-hook), and the losses logged."""

    def __init__(self):
        from transformers import TrainerCallback

        meter = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                from minillava.train.compare.run import peak_memory_mb, reset_peak_memory

                model.register_forward_pre_hook(meter.count, with_kwargs=True)
                reset_peak_memory()
                meter.start_memory_mb = peak_memory_mb()

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    meter.losses.append(float(logs["loss"]))

            def on_train_end(self, args, state, control, **kwargs):
                from minillava.train.compare.run import peak_memory_mb

                meter.peak_memory_mb = peak_memory_mb()
                meter.steps = state.global_step

        self.callback = Callback()
        self.tokens = self.real_tokens = 0
        self.batches = 0
        self.images = 0
        self.losses: list[float] = []
        self.start_memory_mb = self.peak_memory_mb = 0.0
        self.steps = 0

    def count(self, module, args, kwargs):
        if module.training:
            self.tokens += kwargs["input_ids"].numel()
            self.real_tokens += int((kwargs["input_ids"] != PAD_TOKEN_ID).sum())
            self.batches += 1
            for key in ("pixel_values", "vision_features"):
                if kwargs.get(key) is not None:
                    self.images += len(kwargs[key])


def training_args(output_dir: str, sizes: Sizes, **overrides):
    """The Trainer's arguments of every run: the same seed, optimiser and schedule; fp32 (CPU)."""
    from trl import SFTConfig

    settings = {
        "output_dir": output_dir,
        "per_device_train_batch_size": sizes.batch_size,
        "num_train_epochs": 1,
        "learning_rate": 2e-5,
        "lr_scheduler_type": "constant",
        "bf16": False,
        "max_length": sizes.max_length,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "data_seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    return SFTConfig(**{**settings, **overrides})


def run_native(models: dict[str, Path], dataset, output_dir: str, sizes: Sizes, meter: Meter) -> dict:
    """transformers' LlavaForConditionalGeneration through TRL's SFTTrainer and its own vision collator."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration
    from trl import SFTTrainer

    processor = AutoProcessor.from_pretrained(models["llava-hf"])
    model = LlavaForConditionalGeneration.from_pretrained(models["llava-hf"], dtype=torch.float32)
    model.model.vision_tower.requires_grad_(False)  # LLaVA-1.5 stage 2: the projector and the LM train
    trainer = SFTTrainer(
        model=model,
        args=training_args(output_dir, sizes, assistant_only_loss=True),
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[meter.callback],
    )
    return trainer.train().metrics


def run_minillava(
    model_dir: Path, dataset, output_dir: str, sizes: Sizes, meter: Meter, batching: str, epochs: int = 1,
    cache_dir: str | None = None,
) -> dict:  # fmt: skip
    """`minillava sft`'s `train()` on the same rows."""
    from trl import ModelConfig

    from minillava.train.training.sft import SFTScriptArguments, train

    overrides: dict[str, Any] = {"num_train_epochs": epochs}
    if batching == "packed":
        overrides.update(packing=True, packing_strategy="bfd", per_device_train_batch_size=sizes.packed_rows)
    elif batching == "padding_free":
        overrides.update(padding_free=True)
    script_args = SFTScriptArguments(
        dataset_name=None,
        stage="instruct",
        group_by_modality_length=batching == "grouped",
        cache_image_features=cache_dir,
    )
    model_args = ModelConfig(model_name_or_path=str(model_dir), dtype="float32")
    _, metrics = train(
        script_args, training_args(output_dir, sizes, **overrides), model_args, dataset, callbacks=[meter.callback]
    )
    return metrics


def worker(config: str, workdir: Path, quick: bool) -> dict:
    """One training run; returns its figures."""
    from datasets import load_from_disk
    from transformers.utils import logging as hf_logging

    import minillava.modeling  # noqa: F401

    hf_logging.set_verbosity_error()
    sizes = SIZES[quick]
    models = {name: workdir / "models" / name for name in ("llava-1.5", "minigpt4", "llava-hf")}
    dataset = load_from_disk(str(workdir / "data"))
    meter = Meter()
    torch.manual_seed(0)
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as output_dir:
        if config == "native":
            metrics = run_native(models, dataset, output_dir, sizes, meter)
        elif config in CONFIGS:
            metrics = run_minillava(models["llava-1.5"], dataset, output_dir, sizes, meter, config)
        elif config == "minigpt4":
            metrics = run_minillava(models["minigpt4"], dataset, output_dir, sizes, meter, "padded")
        else:  # the cached run fills the cache before training; its train_runtime is the two epochs alone
            cache = str(workdir / "feature-cache") if config == "minigpt4_cached_2ep" else None
            metrics = run_minillava(models["minigpt4"], dataset, output_dir, sizes, meter, "padded", 2, cache)
    return {
        "config": config,
        "train_runtime_s": metrics["train_runtime"],
        "wall_s": time.perf_counter() - wall,
        "steps": meter.steps,
        "model_tokens": meter.tokens,
        "real_tokens": meter.real_tokens,
        "images_through_model": meter.images,
        "peak_memory_mb": meter.peak_memory_mb,
        "training_memory_mb": meter.peak_memory_mb - meter.start_memory_mb,
        "first_loss": meter.losses[0] if meter.losses else None,
        "train_loss": metrics.get("train_loss"),
    }


# --------------------------------------------------------------------------------------------------------------------
# generation (in this process)


@torch.no_grad()
def generation_speed(models: dict[str, Path], samples: list[dict], sizes: Sizes) -> dict:
    """Greedy tokens/s of minillava and of the native class on the same prompts, batch 1 and 8 (left padding);
    `sizes.new_tokens` new tokens per prompt (no early stop), best of `generation_repeats`, alternating."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

    image_samples = [s for s in samples if len(s["images"]) == 1][:8]
    loaded = {
        "minillava": (AutoModelForImageTextToText.from_pretrained(models["llava-1.5"]), models["llava-1.5"]),
        "native": (LlavaForConditionalGeneration.from_pretrained(models["llava-hf"]), models["llava-hf"]),
    }
    results: dict[str, Any] = {}
    for batch_size in (1, 8):
        batch = image_samples[:batch_size]
        timings: dict[str, list[float]] = {name: [] for name in loaded}
        outputs = {}
        for _ in range(sizes.generation_repeats):
            for name, (model, folder) in loaded.items():
                processor = AutoProcessor.from_pretrained(folder)
                processor.tokenizer.padding_side = "left"
                prompts = [processor.apply_chat_template(s["messages"][:1], add_generation_prompt=True) for s in batch]
                inputs = processor(
                    images=[s["images"] for s in batch],
                    text=prompts,
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=False,  # the chat template writes <s>
                )
                model.eval()
                start = time.perf_counter()
                generated = model.generate(
                    **inputs, do_sample=False, max_new_tokens=sizes.new_tokens, min_new_tokens=sizes.new_tokens
                )
                timings[name].append(time.perf_counter() - start)
                outputs[name] = generated[:, inputs["input_ids"].shape[1] :].tolist()
        results[f"batch_{batch_size}"] = {
            **{f"{name}_tokens_per_s": batch_size * sizes.new_tokens / min(times) for name, times in timings.items()},
            "ratio": min(timings["native"]) / min(timings["minillava"]),
            "same_tokens": outputs["minillava"] == outputs["native"],
        }
    return results


# --------------------------------------------------------------------------------------------------------------------
# the vision share of a step at the published 7B shapes, from FLOPs


def vit_forward_flops(layers: int, hidden: int, mlp: int, tokens: int) -> float:
    """Matmul FLOPs of a ViT's forward pass (QKV/output projections, attention, MLP)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * mlp) + 4 * tokens * tokens * hidden
    return layers * per_layer


def decoder_forward_flops(layers: int, hidden: int, mlp: int, vocab: int, tokens: int) -> float:
    """Matmul FLOPs of a Llama decoder's forward pass (gated MLP, causal attention, LM head)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 3 * hidden * mlp) + 2 * tokens * tokens * hidden
    return layers * per_layer + 2 * tokens * hidden * vocab


def vision_share_at_7b() -> dict[str, dict[str, float]]:
    """Share of a training step's FLOPs spent before the connector, per sample, for LLaVA-1.5-7B (CLIP ViT-L/336,
    layers up to -2, 576 image tokens) and MiniGPT-4-7B (EVA ViT-g/224 and a 12-layer Q-Former, 32 image tokens),
    on Vicuna-7B. A trained module costs 3x its forward (forward, input and weight gradients); a frozen LM that
    gradients flow through to the connector 2x; a frozen front end 1x (no backward)."""
    vicuna = {"layers": 32, "hidden": 4096, "mlp": 11008, "vocab": 32000}
    clip = vit_forward_flops(layers=23, hidden=1024, mlp=4096, tokens=577)
    eva = vit_forward_flops(layers=39, hidden=1408, mlp=6144, tokens=257)
    # Q-Former: 12 layers of self-attention over 32 queries, cross-attention to 257 ViT tokens every other layer
    qformer = 12 * 2 * 32 * (4 * 768**2 + 2 * 768 * 3072) + 6 * 2 * (2 * 32 * 768**2 + 2 * 257 * 1408 * 768)
    cases = {
        # (front-end FLOPs, sample tokens, LM cost multiplier)
        "llava-1.5 stage 1 (captions, LM frozen)": (clip, 576 + 60, 2),
        "llava-1.5 stage 2 (665K mix ~ 576 + 400 text tokens, full LM)": (clip, 576 + 400, 3),
        "llava-1.5 stage 2 LoRA": (clip, 576 + 400, 2),
        "minigpt4 stage 1 (captions, LM frozen)": (eva + qformer, 32 + 60, 2),
        "minigpt4 stage 2 (detailed descriptions, LM frozen)": (eva + qformer, 32 + 180, 2),
    }
    shares = {}
    for name, (front_end, tokens, multiplier) in cases.items():
        lm = multiplier * decoder_forward_flops(**vicuna, tokens=tokens)
        share = front_end / (front_end + lm)
        shares[name] = {"vision_share": share, "step_speedup_if_cached": 1 / (1 - share)}
    return shares


# --------------------------------------------------------------------------------------------------------------------
# the whole benchmark


def _versions() -> str:
    import peft
    import transformers
    import trl

    return f"transformers {transformers.__version__}, TRL {trl.__version__}, PEFT {peft.__version__}"


def run_worker(config: str, workdir: Path, quick: bool) -> dict:
    out = workdir / f"{config}.json"
    command = [sys.executable, __file__, "--worker", config, "--workdir", str(workdir), "--result", str(out)]
    if quick:
        command.append("--quick")
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark run {config!r} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-6000:]}")
    return json.loads(out.read_text())


def summarize(runs: dict[str, list[dict]], num_samples: int, real_tokens: int) -> dict[str, dict]:
    table = {}
    for config, results in runs.items():
        runtime = statistics.median(r["train_runtime_s"] for r in results)
        epochs = 2 if config.endswith("_2ep") else 1
        table[config] = {
            "samples_per_s": epochs * num_samples / runtime,
            "real_tokens_per_s": results[0]["real_tokens"] / runtime,
            "padding_fraction": 1 - results[0]["real_tokens"] / results[0]["model_tokens"],
            # the LLaVA runs see the same samples, and the same tokens (MiniGPT-4 has 32 image tokens, not 64)
            "same_real_tokens": results[0]["real_tokens"] == epochs * real_tokens,
            "peak_memory_mb": max(r["peak_memory_mb"] for r in results),
            "training_memory_mb": max(r["training_memory_mb"] for r in results),
            "train_runtime_s": runtime,
            "step_time_s": runtime / results[0]["steps"],
            "steps": results[0]["steps"],
            "first_loss": results[0]["first_loss"],
            "train_loss": results[0]["train_loss"],
            "runtimes_s": [r["train_runtime_s"] for r in results],
        }
    native = table.get("native")
    if native:
        for row in table.values():
            row["samples_per_s_vs_native"] = row["samples_per_s"] / native["samples_per_s"]
            row["peak_memory_vs_native"] = row["peak_memory_mb"] / native["peak_memory_mb"]
    return table


def print_report(report: dict) -> None:
    print(f"\n{report['machine']}")
    print(f"{report['num_samples']} samples ({report['real_tokens']} real tokens), rounds: {report['rounds']}\n")
    header = (
        f"{'run':<22}{'samples/s':>10}{'x native':>9}{'tokens/s':>10}{'padding':>9}{'peak MiB':>10}{'x native':>9}"
    )
    print(header)
    for config, row in report["training"].items():
        print(
            f"{config:<22}{row['samples_per_s']:>10.2f}{row.get('samples_per_s_vs_native', float('nan')):>9.2f}"
            f"{row['real_tokens_per_s']:>10.0f}{row['padding_fraction']:>9.1%}{row['peak_memory_mb']:>10.0f}"
            f"{row.get('peak_memory_vs_native', float('nan')):>9.2f}"
        )
    training = report["training"]
    if "minigpt4" in training:
        print(
            f"\nstep time, same LM, padded batches of 8: llava-1.5 {training['padded']['step_time_s']:.3f} s, "
            f"minigpt4 {training['minigpt4']['step_time_s']:.3f} s"
        )
    if "minigpt4_cached_2ep" in training:
        cached, uncached = training["minigpt4_cached_2ep"], training["minigpt4_uncached_2ep"]
        print(
            f"cached front-end features (minigpt4, 2 epochs): {cached['train_runtime_s']:.1f} s vs "
            f"{uncached['train_runtime_s']:.1f} s uncached ({uncached['train_runtime_s'] / cached['train_runtime_s']:.2f}x), "
            f"train loss {cached['train_loss']:.6f} vs {uncached['train_loss']:.6f}"
        )
    print("\ngreedy generation, tokens/s (minillava vs native LlavaForConditionalGeneration):")
    for batch, row in report["generation"].items():
        print(
            f"  {batch}: {row['minillava_tokens_per_s']:.1f} vs {row['native_tokens_per_s']:.1f} "
            f"({row['ratio']:.2f}x), same tokens: {row['same_tokens']}"
        )
    print("\nvision share of a training step at 7B (FLOPs), and the step speed-up if front-end features are cached:")
    for name, row in report["vision_share_7b"].items():
        print(f"  {name}: {row['vision_share']:.1%} -> {row['step_speedup_if_cached']:.2f}x")
    for target, met in report["targets"].items():
        print(f"{'MET ' if met else 'MISS'} {target}")


def targets(report: dict) -> dict[str, bool]:
    training, generation = report["training"], report["generation"]
    return {
        "packed >= 1.5x native samples/s": training["packed"]["samples_per_s_vs_native"] >= 1.5,
        "packed peak memory <= 1.0x native": training["packed"]["peak_memory_vs_native"] <= 1.0,
        "padding-free >= 1.5x native samples/s": training["padding_free"]["samples_per_s_vs_native"] >= 1.5,
        "grouped >= 1.15x native samples/s": training["grouped"]["samples_per_s_vs_native"] >= 1.15,
        "generation >= 1.0x native tokens/s (batch 1 and 8)": all(row["ratio"] >= 1.0 for row in generation.values()),
    }


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = {k: v for k, v in report["training"].items() if k in CONFIGS}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = list(training)
    colours = ["#888888" if name == "native" else "#3b7dd8" for name in names]
    axes[0].bar(names, [training[n]["samples_per_s"] for n in names], color=colours)
    axes[0].set_title("training samples/s (higher is better)")
    for i, name in enumerate(names):
        axes[0].text(i, training[name]["samples_per_s"], f"{training[name]['samples_per_s_vs_native']:.2f}x",
                     ha="center", va="bottom")  # fmt: skip
    axes[1].bar(names, [100 * training[n]["padding_fraction"] for n in names], color=colours)
    axes[1].set_title("tokens that are padding (%)")
    axes[2].bar(names, [training[n]["peak_memory_mb"] for n in names], color=colours)
    axes[2].set_title("peak resident memory (MiB)")
    for axis in axes:
        axis.tick_params(axis="x", rotation=30)
    figure.suptitle(f"minillava vs transformers LlavaForConditionalGeneration + TRL: {report['machine']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--output_dir", default="benchmark-results")
    parser.add_argument("--quick", action="store_true", help="Fewer samples and one round (a smoke test).")
    parser.add_argument("--configs", default=",".join(CONFIGS + EXTRA_CONFIGS), help="Comma-separated runs.")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        torch.set_num_threads(int(os.environ.get("MINILLAVA_BENCH_THREADS", torch.get_num_threads())))
        Path(args.result).write_text(json.dumps(worker(args.worker, Path(args.workdir), args.quick)))
        return None

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    sizes = SIZES[args.quick]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    configs = [c for c in args.configs.split(",") if c]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        print("building the models and the LLaVA-665K-shaped data ...", flush=True)
        models = make_models(workdir / "models")
        samples = llava_665k_shaped(sizes.num_samples)
        dataset = dataset_of(samples)
        dataset.save_to_disk(str(workdir / "data"))
        runs: dict[str, list[dict]] = {config: [] for config in configs}
        with tqdm(total=sizes.rounds * len(configs), desc="training runs") as bar:
            for _ in range(sizes.rounds):  # rounds interleaved: a slow minute of the machine hits every run alike
                for config in configs:
                    if config == "minigpt4_cached_2ep":
                        # a fresh cache each round: the run pays for filling it (fill time is outside train_runtime)
                        subprocess.run(["rm", "-rf", str(workdir / "feature-cache")], check=True)
                    bar.set_postfix_str(config)
                    runs[config].append(run_worker(config, workdir, args.quick))
                    bar.update()
        print("greedy generation ...", flush=True)
        generation = generation_speed(models, samples, sizes)

    real_tokens = runs[configs[0]][0]["real_tokens"] // (2 if configs[0].endswith("_2ep") else 1)
    report: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, {_versions()}",
        "num_samples": sizes.num_samples,
        "real_tokens": real_tokens,
        "rounds": sizes.rounds,
        "kinds": {kind: sum(s["kind"] == kind for s in samples) for kind in sorted({s["kind"] for s in samples})},
        "training": summarize(runs, sizes.num_samples, real_tokens),
        "generation": generation,
        "vision_share_7b": vision_share_at_7b(),
    }
    if {"native", "packed", "padding_free", "grouped"} <= set(configs):
        report["targets"] = targets(report)
    else:
        report["targets"] = {}
    (output_dir / "train_speed.json").write_text(json.dumps(report, indent=2))
    if "native" in configs:
        plot(report, output_dir / "train_speed.png")
    print_report(report)
    print(f"\nwrote {output_dir / 'train_speed.json'} and {output_dir / 'train_speed.png'}")
    return report


if __name__ == "__main__":
    main()
