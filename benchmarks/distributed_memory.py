"""Memory per GPU of the model states (weights, gradients, optimizer) of LLaVA-1.5-7B and MiniGPT-4 (Vicuna-7B) under
each shipped launch config, from the parameter counts of the real shapes (the models are built on the meta device,
nothing is downloaded) and the stages' trainable sets as `minillava sft` freezes them.

```bash
python benchmarks/distributed_memory.py            # 8 GPUs; --num_gpus N for another count
```

Mixed precision as DeepSpeed and FSDP2 keep it (`bf16: true`): 2 bytes of bf16 weights per parameter, and per
trainable parameter 2 bytes of gradient and 12 of AdamW state (fp32 master weight, first and second moments).
- DDP replicates everything; ZeRO-2 shards gradients and optimizer states; ZeRO-3 and FSDP2 shard weights too.
- Activations come on top (they depend on batch, length and gradient checkpointing); so do the CUDA context (~0.5 GiB)
  and the allocator's fragmentation. The figures are the floor a run needs, not a measurement.
Writes `benchmark-results/distributed_memory.json`.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from transformers import Blip2QFormerConfig, Blip2VisionConfig, CLIPVisionConfig, LlamaConfig

from minillava.modeling import (
    MiniGPT4Config,
    MiniGPT4ForConditionalGeneration,
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
)
from minillava.train.training.recipes import lora_target_regex, set_trainable


GIB = 1024**3
VICUNA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32}
CLIP_L_336 = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16}
EVA_G = {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39, "num_attention_heads": 16}
LORA = {"r": 128}  # LLaVA-1.5's LoRA recipe (r 128, alpha 256), the connector trained in full


def build(arch: str) -> torch.nn.Module:
    """The published 7B shape of `arch` on the meta device."""
    text = LlamaConfig(vocab_size=32064, **VICUNA_7B)  # Vicuna's 32000 + <image> + padding to a multiple of 64
    if arch == "llava-1.5":
        vision = CLIPVisionConfig(image_size=336, patch_size=14, projection_dim=768, **CLIP_L_336)
        config = MiniLlavaConfig(vision_config=vision, text_config=text, image_token_id=32000)
        model_class = MiniLlavaForConditionalGeneration
    else:
        vision = Blip2VisionConfig(image_size=224, patch_size=14, **EVA_G)
        qformer = Blip2QFormerConfig(encoder_hidden_size=EVA_G["hidden_size"])
        config = MiniGPT4Config(vision_config=vision, qformer_config=qformer, text_config=text, image_token_id=32000)
        model_class = MiniGPT4ForConditionalGeneration
    with torch.device("meta"):
        return model_class(config)


def count(model: torch.nn.Module, stage: str) -> dict[str, int]:
    """Total and trainable parameters of `model` in `stage` (align, instruct, lora)."""
    total = sum(p.numel() for p in model.parameters())
    if stage == "lora":
        set_trainable(model, "align")  # the connector in full (modules_to_save), the rest frozen
        pattern = re.compile(lora_target_regex(model))
        adapters = sum(
            LORA["r"] * (module.in_features + module.out_features)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) + adapters
        return {"total": total + adapters, "trainable": trainable}
    set_trainable(model, stage)
    return {"total": total, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def per_gpu(total: int, trainable: int, config: str, num_gpus: int) -> float:
    """GiB of model states per GPU under `config`."""
    weights, gradients, optimizer = 2 * total, 2 * trainable, 12 * trainable
    shards = {
        "ddp": (1, 1, 1),
        "zero2": (1, num_gpus, num_gpus),
        "zero3": (num_gpus, num_gpus, num_gpus),
        "fsdp2": (num_gpus, num_gpus, num_gpus),
    }[config]
    return (weights / shards[0] + gradients / shards[1] + optimizer / shards[2]) / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_gpus", type=int, default=8)
    parser.add_argument("--output", default="benchmark-results/distributed_memory.json")
    args = parser.parse_args()
    configs = ("ddp", "zero2", "zero3", "fsdp2")
    rows = []
    for arch in ("llava-1.5", "minigpt4"):
        for stage in ("align", "instruct", "lora"):
            counts = count(build(arch), stage)
            memory = {
                config: per_gpu(counts["total"], counts["trainable"], config, args.num_gpus) for config in configs
            }
            rows.append({"arch": arch, "stage": stage, **counts, "gib_per_gpu": memory})
    print(f"Model states per GPU (GiB), {args.num_gpus} GPUs, bf16 weights + fp32 AdamW; activations not included")
    print(f"{'model':<11}{'stage':<10}{'params':>8}{'trainable':>11}" + "".join(f"{c:>8}" for c in configs))
    for row in rows:
        memory = "".join(f"{row['gib_per_gpu'][c]:>8.1f}" for c in configs)
        print(
            f"{row['arch']:<11}{row['stage']:<10}{row['total'] / 1e9:>7.2f}B{row['trainable'] / 1e6:>10.1f}M{memory}"
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"num_gpus": args.num_gpus, "rows": rows}, indent=1) + "\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
