"""`minillava convert`: convert checkpoints to and from minillava: llava-hf (both ways), original LLaVA-1.5 (full,
stage-1 projector, LoRA) and MiniGPT-4 (`llama_proj` + BLIP-2 + a causal LM)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .llava import convert_from_llava
from .llava_hf import convert_from_llava_hf, convert_to_llava_hf
from .minigpt4 import convert_from_minigpt4


SOURCE_FORMATS = ("llava-hf", "llava", "minigpt4")
TARGET_FORMATS = ("llava-hf",)

EXAMPLES = """examples:
  minillava convert --from llava-hf llava-hf/llava-1.5-7b-hf --output-dir llava-1.5-7b-minillava
  minillava convert --to llava-hf llava-1.5-7b-minillava --output-dir llava-1.5-7b-hf
  minillava convert --from llava liuhaotian/llava-v1.5-7b --output-dir llava-v1.5-7b-minillava
  minillava convert --from llava lmsys/vicuna-7b-v1.5 --mm-projector pretrain/mm_projector.bin --output-dir stage1
  minillava convert --from llava checkpoints/llava-v1.5-7b-lora --base-model lmsys/vicuna-7b-v1.5 --output-dir merged
  minillava convert --from minigpt4 prerained_minigpt4_7b.pth --blip2 Salesforce/blip2-flan-t5-xxl \\
      --text-model vicuna-7b-v0 --output-dir minigpt4-7b
"""

# The options each conversion takes, besides the source and --output-dir.
FORMAT_OPTIONS = {
    ("from", "llava-hf"): ("dtype", "max_shard_size"),
    ("from", "llava"): (
        "vision_model",
        "mm_projector",
        "base_model",
        "chat_template",
        "dtype",
        "pad_to_multiple_of",
        "max_shard_size",
        "seed",
    ),
    ("from", "minigpt4"): (
        "blip2",
        "text_model",
        "blip2_config",
        "chat_template",
        "dtype",
        "pad_to_multiple_of",
        "max_shard_size",
        "seed",
    ),
    ("to", "llava-hf"): ("max_shard_size",),
}
CONVERTERS = {
    ("from", "llava-hf"): convert_from_llava_hf,
    ("from", "llava"): convert_from_llava,
    ("from", "minigpt4"): convert_from_minigpt4,
    ("to", "llava-hf"): convert_to_llava_hf,
}
REQUIRED_OPTIONS = {("from", "minigpt4"): ("blip2", "text_model")}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava convert",
        description=__doc__.split(": ", 1)[1],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from", dest="from_format", choices=SOURCE_FORMATS, help="convert a checkpoint to minillava"
    )
    direction.add_argument("--to", dest="to_format", choices=TARGET_FORMATS, help="export a minillava model")
    parser.add_argument("source", metavar="SRC", help="source folder (minigpt4: the .pth holding llama_proj)")
    parser.add_argument(
        "--output-dir", "--output_dir", required=True, help="where the converted model and processor are written"
    )
    parser.add_argument("--dtype", help="auto (the language model's), float32, bfloat16 or float16 (default: auto)")
    parser.add_argument(
        "--max-shard-size", "--max_shard_size", help="largest weight file written, e.g. 5GB (default: 5GB)"
    )
    parser.add_argument(
        "--chat-template", "--chat_template", help="vicuna_v1, plain, minigpt4_vicuna0, minigpt4_llama2 or lm"
    )
    parser.add_argument(
        "--pad-to-multiple-of", "--pad_to_multiple_of", type=int, help="pad the grown vocabulary (llava-hf uses 64)"
    )
    parser.add_argument("--seed", type=int, help="seed for the embedding rows of added tokens (default: 0)")
    llava = parser.add_argument_group("--from llava")
    llava.add_argument(
        "--vision-model",
        "--vision_model",
        help="vision tower folder or Hub id (default: the config's mm_vision_tower)",
    )
    llava.add_argument(
        "--mm-projector", "--mm_projector", help="a stage-1 mm_projector.bin to apply to SRC, a base causal LM"
    )
    llava.add_argument("--base-model", "--base_model", help="the base causal LM of a LoRA output SRC")
    minigpt4 = parser.add_argument_group("--from minigpt4")
    minigpt4.add_argument("--blip2", help="BLIP-2 checkpoint: a transformers Blip2 folder or a LAVIS .pth")
    minigpt4.add_argument(
        "--blip2-config", "--blip2_config", help="Blip2Config folder for a LAVIS .pth of non-standard size"
    )
    minigpt4.add_argument("--text-model", "--text_model", help="the causal LM folder (Vicuna / Llama-2)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """`minillava convert`: convert, save, and print where."""
    parser = make_parser()
    args = parser.parse_args(argv)
    key = ("from", args.from_format) if args.from_format else ("to", args.to_format)
    allowed = FORMAT_OPTIONS[key]
    given = {name: value for name, value in vars(args).items() if value is not None}
    extra = sorted(set(given) - set(allowed) - {"from_format", "to_format", "source", "output_dir"})
    if extra:
        parser.error(
            f"--{key[0]} {key[1]} does not take " + ", ".join("--" + name.replace("_", "-") for name in extra)
        )
    for required in REQUIRED_OPTIONS.get(key, ()):
        if required not in given:
            parser.error(f"--{key[0]} {key[1]} needs --{required.replace('_', '-')}")
    if Path(args.output_dir).resolve() == Path(args.source).resolve():
        parser.error("--output-dir must differ from SRC")
    CONVERTERS[key](args.source, args.output_dir, **{name: given[name] for name in allowed if name in given})
    print(f"Converted {args.source} ({key[0]} {key[1]}) to {args.output_dir}")
