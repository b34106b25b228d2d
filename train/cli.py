"""The `minillava` command: one entry point, one sub-command per job."""

from __future__ import annotations

import importlib
import importlib.util
import sys


COMMANDS = {
    "build": ("minillava.train.training.build", "compose a model and processor from a vision encoder and a causal LM"),
    "sft": ("minillava.train.training.sft", "train a stage (align / instruct) with TRL's SFTTrainer"),
    "push": ("minillava.train.hub.push", "upload a trained output folder to the Hub (retried, no pickles)"),
    "merge": ("minillava.train.training.merge", "merge a LoRA adapter into a full model"),
    "convert": ("minillava.train.conversion", "convert llava-hf, original LLaVA and MiniGPT-4 checkpoints"),
    "demo": ("minillava.train.demo.run", "offline two-stage demo for both architectures on a synthetic world"),
    "eval": ("minillava.train.eval.run", "answer and score a benchmark as LLaVA-1.5's evaluation (resumable)"),
    "compare": (
        "minillava.train.compare.run",
        "train MiniGPT-4 and LLaVA-1.5 alike on your data, evaluate both, report side by side",
    ),
    "chat": (
        "minillava.train.chat.terminal",
        "chat with a model in the terminal, answers streamed (/image, /reset, /save)",
    ),
    "web": ("minillava.train.chat.web", "a web page to upload an image and chat with a model, answers streamed"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        lines = [f"  {name:<8} {help_}" for name, (_, help_) in commands.items()]
        print("usage: minillava COMMAND [--help] [ARGS...]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nminillava: unknown command {argv[0]!r}", file=sys.stderr)
            sys.exit(2)
        return
    importlib.import_module(commands[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    main()
