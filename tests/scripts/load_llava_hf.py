"""Loads an exported llava-hf folder with transformers' own classes only (no minillava, no remote code) and writes
what it computed. tests/test_convert.py runs it with a transformers 4.57 Python, and calls `compute` in-process."""

import json
import sys

import numpy as np
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]


def test_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))


def compute(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Loads `path` with `LlavaForConditionalGeneration` and `AutoProcessor`; the logits on a chat with one image."""
    model, info = transformers.LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    model.eval()
    processor = transformers.AutoProcessor.from_pretrained(path)
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    inputs = processor(images=[test_image()], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    result = {
        "transformers": transformers.__version__,
        "processor_class": type(processor).__name__,
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "prompt": prompt,
        "input_ids": inputs["input_ids"].tolist(),
    }
    return result, {"logits": logits.contiguous(), "pixel_values": inputs["pixel_values"].contiguous()}


def main(path: str, out: str) -> None:
    # Nothing of ours may be used: the folder must load with transformers' native LLaVA classes.
    for name in ("minillava", "modeling_minillava", "processing", "train"):
        sys.modules[name] = None
    result, tensors = compute(path)
    save_file(tensors, f"{out}/out.safetensors")
    with open(f"{out}/result.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
