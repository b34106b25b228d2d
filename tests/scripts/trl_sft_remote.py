"""Trains a saved minillava folder with TRL's own SFTTrainer and vision collator, `assistant_only_loss=True`, where
minillava cannot be imported (the folder's code files run through trust_remote_code). Run by tests/test_sft_remote.py.

Usage: python trl_sft_remote.py MODEL_FOLDER OUTPUT_FOLDER; writes OUTPUT_FOLDER/result.json.
"""

import json
import sys


# Our package must not be importable: everything has to come from the folder's own code files.
for name in ("minillava", "modeling_minillava", "processing", "train"):
    sys.modules[name] = None

import numpy as np  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402


ANSWERS = ["A red circle.", "yes", "Two blue squares.", "left"]


def sample(index: int) -> dict:
    image = Image.fromarray(np.random.default_rng(index).integers(0, 256, (20, 24 + index, 3), dtype=np.uint8))
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[index % len(ANSWERS)]}]},
        ],
        "images": [image],
    }


def main(path: str, out: str) -> None:
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    rows = [sample(i) for i in range(4)]
    dataset = Dataset.from_dict({"messages": [r["messages"] for r in rows], "images": [r["images"] for r in rows]})
    args = SFTConfig(
        output_dir=out,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        assistant_only_loss=True,
        max_length=None,
        use_cpu=True,
        bf16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        dataloader_num_workers=0,
    )
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    batch = trainer.data_collator([dict(rows[0]), dict(rows[1])])
    kept = batch["labels"] != -100
    answers = [processor.tokenizer.decode(batch["input_ids"][i][kept[i]]) for i in range(2)]
    image_labels = batch["labels"][batch["input_ids"] == processor.image_token_id]
    trainer.train()
    changed = [name for name, param in model.named_parameters() if not torch.equal(before[name], param.detach())]
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "model_module": type(model).__module__,
        "processor_module": type(processor).__module__,
        "collator": type(trainer.data_collator).__name__,
        "answers": answers,
        "image_labels_masked": bool((image_labels == -100).all()),
        "losses": losses,
        "changed": len(changed),
        "connector_changed": any("projector" in n or "language_projection" in n for n in changed),
    }
    with open(f"{out}/result.json", "w") as file:
        json.dump(result, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
