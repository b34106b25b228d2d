"""Training on several processes: the shipped accelerate launch configs, `minillava sft --launch`, and the checks
that stop a run whose processes would not train together.

The configs live in `hub_configs/accelerate/` (`ddp`, `zero2`, `zero3`, `fsdp2`). `minillava sft --launch NAME
[--num_processes N] ARGS...` runs `accelerate launch --config_file <that file> [--num_processes N] -m
minillava.train.training.sft ARGS...`; the same `accelerate launch` line works by hand from a clone of this repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from .recipes import resolve_shipped


ACCELERATE_FOLDER = "accelerate"


def resolve_launch_config(config: str) -> str:
    """`config` itself when it is a file, else the path of the shipped accelerate config called `config`."""
    return resolve_shipped(config, folder=ACCELERATE_FOLDER, flag="--launch")


def pop_option(argv: list[str], name: str) -> str | None:
    """Removes `name VALUE` (or `name=VALUE`) from `argv` and returns VALUE (None when absent)."""
    for index, item in enumerate(argv):
        if item == name:
            if index + 1 >= len(argv):
                raise ValueError(f"{name} needs a value.")
            value = argv[index + 1]
            del argv[index : index + 2]
            return value
        if item.startswith(f"{name}="):
            del argv[index]
            return item.split("=", 1)[1]
    return None


def _with_absolute_deepspeed_file(config_path: str, folder: str) -> str:
    """`config_path`, or a copy of it in `folder` whose DeepSpeed JSON path is absolute when it is relative (accelerate
    reads it relative to the directory it is launched from; the shipped configs name it from the repository root)."""
    config = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    deepspeed = config.get("deepspeed_config") or {}
    json_file = deepspeed.get("deepspeed_config_file")
    if not json_file or Path(json_file).is_absolute() or Path(json_file).is_file():
        return config_path
    beside = Path(config_path).resolve().parent / Path(json_file).name
    if not beside.is_file():
        raise FileNotFoundError(f"{config_path} names the DeepSpeed config {json_file}, which does not exist.")
    deepspeed["deepspeed_config_file"] = str(beside)
    copy = Path(folder) / Path(config_path).name
    copy.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return str(copy)


def launch_command(config_path: str, num_processes: str | None, argv: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `minillava sft ARGV` under `config_path`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_path]
    if num_processes is not None:
        command += ["--num_processes", str(num_processes)]
    return [*command, "-m", "minillava.train.training.sft", *argv]


def launch(argv: list[str]) -> int:
    """`minillava sft --launch CONFIG [--num_processes N] ARGS...`: runs ARGS under `accelerate launch` with the
    shipped config CONFIG (or a config file of yours) and returns its exit status."""
    argv = list(argv)
    config = resolve_launch_config(pop_option(argv, "--launch"))
    num_processes = pop_option(argv, "--num_processes")
    with tempfile.TemporaryDirectory(prefix="minillava-launch-") as folder:
        command = launch_command(_with_absolute_deepspeed_file(config, folder), num_processes, argv)
        print("minillava sft: " + " ".join(command[1:]), file=sys.stderr, flush=True)
        return subprocess.call(command)


class LaunchError(RuntimeError):
    """The processes of a launch would not train together (each alone on all of the data, or in another mode)."""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def check_processes(distributed_type: str, num_processes: int) -> None:
    """Raises when this process was launched as one of several but accelerate did not join it to the others (each
    would train alone on all of the data) or runs it in another mode than the one asked for.

    `distributed_type` and `num_processes` are what accelerate made of the launch (`PartialState()`).
    """
    mpi_size = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    launched_alone_by_cpu_flag = (
        _env_flag("ACCELERATE_USE_CPU")
        and "MASTER_ADDR" in os.environ
        and "WORLD_SIZE" not in os.environ
        and not any(name in os.environ for name in mpi_size)
    )
    if launched_alone_by_cpu_flag:
        raise LaunchError(
            "accelerate launch --cpu starts one process whatever --num_processes says (its multi-CPU mode needs "
            "mpirun), so this run would train alone. Run several CPU processes over gloo with `minillava sft --launch "
            "ddp --num_processes N ...` (or `accelerate launch --config_file hub_configs/accelerate/ddp.yaml "
            "--num_processes N -m minillava.train.training.sft ...`), without --cpu."
        )
    use_ddp = "On a machine without GPUs use the ddp config (`minillava sft --launch ddp --num_processes N ...`)."
    fsdp = " accelerate runs FSDP on GPUs (and other accelerators) only." if _env_flag("ACCELERATE_USE_FSDP") else ""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and num_processes == 1:
        raise LaunchError(
            f"This process was launched as one of {world_size}, but accelerate runs it on its own "
            f"({distributed_type}): each process would train alone on all of the data.{fsdp} {use_ddp}"
        )
    if fsdp and distributed_type != "FSDP":
        raise LaunchError(
            f"FSDP was asked for, but accelerate runs this job as {distributed_type} (--use_cpu turns FSDP off):{fsdp} "
            f"{use_ddp}"
        )


def keep_used_weight_conversions(model) -> None:
    """Keeps, of the key renamings recorded on `model` by `from_pretrained`, those its checkpoint used.

    transformers reverts the recorded renamings when it saves. Its DeepSpeed ZeRO-3 loading path records every
    renaming it knows for the model's parts, used or not (the other paths keep the used ones only), so a model
    trained under ZeRO-3 would be saved under legacy key names (`language_model.model.*`, `LayerNorm.gamma`) that
    transformers 4.x and other tools do not read.
    """
    conversions = getattr(model, "_weight_conversions", None)
    if conversions:
        model._weight_conversions = [conversion for conversion in conversions if conversion.was_used()]


__all__ = [
    "LaunchError",
    "check_processes",
    "keep_used_weight_conversions",
    "launch",
    "launch_command",
    "pop_option",
    "resolve_launch_config",
]
