"""`minillava merge`: a LoRA adapter (with its connector) merged into its base model, saved as a full model.

```bash
minillava merge checkpoints/llava-1.5-7b-lora --output-dir checkpoints/llava-1.5-7b-merged
minillava merge your-name/llava-1.5-7b-lora --output-dir merged --push-to-hub --hub-model-id your-name/llava-merged
```

The base model is the adapter's `base_model_name_or_path` (or `--base-model`), loaded unquantized: a QLoRA adapter
is merged into full-precision weights. The processor comes from the adapter folder (where `minillava sft` saves it),
else from the base model. The merged folder gets a model card (`base_model`: the Hub id the adapter was trained on,
when known; what was merged; the adapter's training, from its own card) and the adapter's `loss_curve.png`;
`--push-to-hub` uploads that folder as it is.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


def _adapter_file(adapter: str, name: str, revision: str | None = None) -> Path | None:
    """The file `name` of the adapter (a local folder or a Hub repo), or None where it has none."""
    if os.path.isdir(adapter):
        path = Path(adapter) / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(adapter, name, revision=revision))
    except Exception as error:  # no such file (or the Hub cannot say): the card goes without it
        logger.info("No %s in %s: %s", name, adapter, error)
        return None


def write_merged_card(
    model,
    output_dir: str,
    adapter: str,
    base_model: str,
    peft_config,
    dtype: str,
    revision: str | None = None,
    hub_model_id: str | None = None,
) -> None:
    """Writes the merged folder's `README.md` (see [`minillava.train.hub.cards.merged_card`]) with the adapter's
    `loss_curve.png` beside it."""
    from huggingface_hub import ModelCard

    from ..hub.cards import CARD_NAME, hub_id_of, is_hub_id, merged_card
    from ..plots import LOSS_CURVE_NAME

    card_file = _adapter_file(adapter, CARD_NAME, revision)
    adapter_card = None
    if card_file is not None:
        try:
            adapter_card = ModelCard.load(card_file)
        except Exception as error:  # a card that does not parse: merged without its details
            logger.warning("Ignoring the unreadable card of %s: %s", adapter, error)
    base_id = hub_id_of(base_model)
    declared = getattr(adapter_card.data, "base_model", None) if adapter_card is not None else None
    if base_id is None and base_model == peft_config.base_model_name_or_path and isinstance(declared, str):
        base_id = declared if is_hub_id(declared) else None  # the Hub id the training run traced its base to
    curve = _adapter_file(adapter, LOSS_CURVE_NAME, revision)
    if curve is not None:
        shutil.copyfile(curve, Path(output_dir) / LOSS_CURVE_NAME)
    else:  # never another adapter's curve, left by an earlier merge into the same folder
        (Path(output_dir) / LOSS_CURVE_NAME).unlink(missing_ok=True)
    card = merged_card(
        model.config,
        repo_id=hub_model_id or Path(output_dir).resolve().name,
        adapter=adapter,
        base_model=base_model,
        base_id=base_id,
        peft_config=peft_config,
        adapter_card=adapter_card,
        dtype=dtype,
        folder=output_dir,
    )
    card.save(Path(output_dir) / CARD_NAME)


def merge(
    adapter: str,
    output_dir: str,
    base_model: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
    hub_model_id: str | None = None,
):
    """Loads `adapter` on its base, merges it (`merge_and_unload`) and saves model and processor to `output_dir`
    with [`minillava.train.training.build.save`], with a model card (titled `hub_model_id` when given) and the adapter's loss
    curve; returns `(model, processor)`."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    import minillava.modeling  # noqa: F401  (registers the minillava classes with the Auto classes)
    from minillava.processing import MiniLlavaProcessor

    from .build import save

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
    write_merged_card(model, output_dir, adapter, base_model, peft_config, dtype, revision, hub_model_id)
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
    model, processor = merge(
        args.adapter, args.output_dir, args.base_model, args.dtype, args.revision, args.hub_model_id
    )
    print(f"Saved the merged {type(model).__name__}, its processor and its card to {args.output_dir}")
    if args.push_to_hub:
        from ..hub.push import push

        push(args.output_dir, args.hub_model_id, commit_message="Upload the merged model with minillava merge")
        print(f"Pushed to {args.hub_model_id}")


__all__ = ["main", "make_parser", "merge", "write_merged_card"]
