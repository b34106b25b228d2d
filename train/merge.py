"""`minillava merge`: a LoRA adapter (with its connector) merged into its base model, saved as a full model.

```bash
minillava merge checkpoints/llava-1.5-7b-lora --output-dir checkpoints/llava-1.5-7b-merged
minillava merge your-name/llava-1.5-7b-lora --output-dir merged --push-to-hub --hub-model-id your-name/llava-merged
```

The base model is the adapter's `base_model_name_or_path` (or `--base-model`), loaded unquantized: a QLoRA adapter
is merged into full-precision weights. The processor comes from the adapter folder (where `minillava sft` saves it),
else from the base model.
"""

from __future__ import annotations

import argparse
import logging

import torch


logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def merge(
    adapter: str,
    output_dir: str,
    base_model: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
):
    """Loads `adapter` on its base, merges it (`merge_and_unload`) and saves model and processor to `output_dir`
    with [`minillava.train.build.save`]; returns `(model, processor)`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    import minillava.modeling  # noqa: F401  (registers the minillava classes with the Auto classes)
    from minillava.processing import MiniLlavaProcessor
    from minillava.train.build import save

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    peft_config = PeftConfig.from_pretrained(adapter, revision=revision)
    base_model = base_model or peft_config.base_model_name_or_path
    if base_model is None:
        raise ValueError(f"{adapter} does not name its base model; pass --base-model.")
    base = AutoModelForImageTextToText.from_pretrained(base_model, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, adapter, revision=revision).merge_and_unload()
    model.eval()
    try:
        processor = MiniLlavaProcessor.from_pretrained(adapter, revision=revision)
    except OSError:
        processor = MiniLlavaProcessor.from_pretrained(base_model)
    save(model, processor, output_dir)
    logger.info("Merged %s into %s and saved the result to %s", adapter, base_model, output_dir)
    return model, processor


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillava merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter", help="Folder or Hub id of a LoRA adapter saved by `minillava sft`.")
    parser.add_argument("--output-dir", "--output_dir", required=True, help="Where the merged model is saved.")
    parser.add_argument("--base-model", "--base_model", help="Base model (default: the adapter's own base).")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="Dtype of the merged weights.")
    parser.add_argument("--revision", help="Revision of the adapter on the Hub.")
    parser.add_argument("--push-to-hub", "--push_to_hub", action="store_true", help="Push the merged model.")
    parser.add_argument("--hub-model-id", "--hub_model_id", help="Repository to push to.")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`minillava merge ADAPTER --output-dir DIR`."""
    args = make_parser().parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        raise SystemExit("minillava merge: --push-to-hub needs --hub-model-id")
    model, processor = merge(args.adapter, args.output_dir, args.base_model, args.dtype, args.revision)
    print(f"Saved the merged {type(model).__name__} and its processor to {args.output_dir}")
    if args.push_to_hub:
        model.push_to_hub(args.hub_model_id)
        processor.push_to_hub(args.hub_model_id)
        print(f"Pushed to {args.hub_model_id}")


__all__ = ["main", "make_parser", "merge"]
