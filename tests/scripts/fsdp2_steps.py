"""Three AdamW steps of a stage-2 minillava model (connector + language model training, vision tower frozen) under
torch's FSDP2 (`fully_shard` on every layer named in the model's `_no_split_modules`, then the root), over gloo on
the CPU: rank 0 takes two image samples, rank 1 two text-only ones. Run without `torchrun`, one process takes both
half-batches (gradient accumulation) instead. Either way the trained weights are written to OUTPUT.

    torchrun --nproc_per_node 2 fsdp2_steps.py MODEL_FOLDER OUTPUT.safetensors
    python fsdp2_steps.py MODEL_FOLDER OUTPUT.safetensors
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import make_image  # noqa: E402

import minillava.modeling  # noqa: E402, F401
from minillava.train.training.recipes import set_trainable  # noqa: E402


QUESTIONS = ["What is in the image?", "Describe it.", "Say something.", "Tell me a story."]
ANSWERS = ["A red circle.", "Two blue squares.", "Something.", "Once upon a time."]


def batch(processor, indices: list[int], with_images: bool) -> dict[str, torch.Tensor]:
    """Samples `indices`, each with one image or none, padded on the right; labels = the tokens, padding masked."""
    texts = []
    for i in indices:
        user = [{"type": "image"}] if with_images else []
        messages = [
            {"role": "user", "content": [*user, {"type": "text", "text": QUESTIONS[i]}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i]}]},
        ]
        texts.append(processor.apply_chat_template(messages))
    images = [make_image(i, size=(24 + i, 20)) for i in indices] if with_images else None
    inputs = processor(images=images, text=texts, padding=True, return_tensors="pt")
    inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    return dict(inputs)


def main(folder: str, output: str) -> None:
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder)
    set_trainable(model, "instruct")
    model.train()
    batches = [batch(processor, [0, 1], with_images=True), batch(processor, [2, 3], with_images=False)]
    image_token = model.config.image_token_id
    # the loss is a sum over the global batch's target tokens divided by their count, on both set-ups
    num_items = sum(int(((b["labels"] != -100) & (b["input_ids"] != image_token))[:, 1:].sum()) for b in batches)
    if distributed:
        from torch.distributed.fsdp import fully_shard

        for module in reversed(list(model.modules())):  # inner units first (BLIP-2 lists layers and their parts)
            if type(module).__name__ in model._no_split_modules:
                fully_shard(module)
        fully_shard(model)
        mine, scale = [batches[dist.get_rank()]], dist.get_world_size()  # FSDP averages the ranks' gradients
    else:
        mine, scale = batches, 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        for inputs in mine:
            (model(**inputs, num_items_in_batch=num_items).loss * scale).backward()
        optimizer.step()
        optimizer.zero_grad()
    if distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() == 0:
            save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, output)
        dist.destroy_process_group()
    else:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, output)


if __name__ == "__main__":
    main(*sys.argv[1:3])
