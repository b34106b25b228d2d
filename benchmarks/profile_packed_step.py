"""Where the time of one packed training step goes: `torch.profiler` over the collation, forward, backward and optimizer
step of `minillava sft --packing` batches on the benchmark's model and data (see `train_speed.py`).

```bash
python benchmarks/profile_packed_step.py             # prints the top operators; writes benchmark-results/packed_step.json
```
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import train_speed
from torch.profiler import ProfilerActivity, profile, record_function


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="benchmark-results")
    parser.add_argument("--steps", type=int, default=3, help="Profiled steps (after one warm-up step).")
    args = parser.parse_args(argv)

    from transformers import AutoModelForImageTextToText
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    import minillava.modeling  # noqa: F401
    from minillava.processing import MiniLlavaProcessor
    from minillava.train.training.data import load_sft_dataset
    from minillava.train.training.packing import PackedBatchSampler, PaddingFreeCollator
    from minillava.train.training.recipes import set_trainable

    sizes = train_speed.SIZES[False]
    with tempfile.TemporaryDirectory() as tmp:
        models = train_speed.make_models(Path(tmp))
        processor = MiniLlavaProcessor.from_pretrained(models["llava-1.5"])
        model = AutoModelForImageTextToText.from_pretrained(models["llava-1.5"], dtype=torch.float32)
    set_trainable(model, "instruct")
    model.train()
    dataset, _ = load_sft_dataset(
        train_speed.dataset_of(train_speed.llava_665k_shaped(sizes.num_samples)), processor,
        max_length=sizes.max_length,
    )  # fmt: skip
    collator = PaddingFreeCollator(
        DataCollatorForVisionLanguageModeling(processor, max_length=None, assistant_only_loss=True),
        image_token_id=processor.image_token_id,
        num_image_tokens=processor.num_image_tokens,
        pad_token_id=processor.tokenizer.pad_token_id,
        max_length=sizes.max_length,
    )
    batches = iter(PackedBatchSampler(dataset["length"], sizes.max_length, sizes.packed_rows, seed=0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def step() -> None:
        with record_function("collate (TRL collator + padding-free layout)"):
            batch = collator([{key: dataset[i][key] for key in ("messages", "images")} for i in next(batches)])
        with record_function("forward"):
            loss = model(**batch).loss
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()
            optimizer.zero_grad()

    step()  # warm-up
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 / args.steps for e in events if e.key in (
        "collate (TRL collator + padding-free layout)", "forward", "backward", "optimizer")}  # fmt: skip
    top = sorted((e for e in events if not e.key.startswith(("collate", "forward", "backward", "optimizer"))),
                 key=lambda e: e.self_cpu_time_total, reverse=True)[:15]  # fmt: skip
    print(f"one packed step ({sizes.packed_rows} rows of {sizes.max_length} tokens): {seconds:.3f} s (profiled)")
    for name, value in phases.items():
        print(f"  {name:<48}{value:>8.3f} s  {value / seconds:>6.1%}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    result = {
        "step_s": seconds,
        "phases_s": phases,
        "top_ops_self_s": {e.key: e.self_cpu_time_total / 1e6 / args.steps for e in top},
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "packed_step.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
