"""Training on 2 processes over gloo with the shipped launch configs (`minillava sft --launch CONFIG --num_processes 2`,
the README's commands): DDP (both architectures, full and LoRA, QLoRA), DeepSpeed ZeRO-2 and ZeRO-3 give the weights
of a single-process run of the same global batch; ranks whose batches differ in modality (images on one, text only on
the other) neither hang nor drift; a checkpoint of a 2-process run resumes in a single process; the launches that
would silently train each process alone (`accelerate launch --cpu`, FSDP on a machine without GPUs) stop with an
error that says what to run instead; torch's FSDP2 itself (which accelerate runs on GPUs only) trains both
architectures over gloo to the weights of one process."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from sft_helpers import build_tiny_models, llava_record, run_sft, write_llava_dataset

from minillava.train.training.distributed import launch_command, resolve_launch_config


MINILLAVA = str(Path(sys.executable).parent / "minillava")
HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
TIMEOUT = 300  # a hang (ranks waiting on each other) fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return {arch: folder for arch, (folder, _) in build_tiny_models(tmp_path_factory.mktemp("built")).items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 samples read in order, 2 per process and step: rank 0 always gets two image samples, rank 1 two text-only
    ones (a single process with batches of 4 reads the same global batches)."""
    image, text = (lambda i: llava_record(i)), (lambda i: llava_record(i, image=None, question="Say something."))
    records = [image(0), image(1), text(2), text(3), image(4), image(5), text(6), text(7)]
    path, images = write_llava_dataset(tmp_path_factory.mktemp("data"), records=records)
    return ["--dataset_name", str(path), "--image_folder", str(images), "--train_sampling_strategy", "sequential"]


# LoRA's dropout draws other masks on 2 processes than on one: off, so that the runs can agree.
COMMON = ["--learning_rate", "1e-3", "--max_steps", "4", "--report_to", "none", "--lora_dropout", "0"]


def launch(config: str, *args: str, cwd: Path, expect_ok: bool = True) -> subprocess.CompletedProcess:
    """`minillava sft --launch CONFIG --num_processes 2 ARGS...`, run from `cwd` (not the repository)."""
    command = [MINILLAVA, "sft", "--launch", config, "--num_processes", "2", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    if expect_ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(folder / name)


def assert_same_weights(folder: Path, reference: Path, start: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    """Same keys, same values as `reference` within `atol`, and training moved some value by more than 100 × that."""
    got, want = weights(folder), weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(
            got[key], want[key], atol=atol, rtol=0, msg=lambda m, key=key: f"{folder.name} {key}: {m}"
        )
    moved = max((want[k].float() - start[k].float()).abs().max().item() / atol for k in want if k in start)
    assert moved > 100, f"the run barely trained ({moved:.1f} tolerances): the comparison would prove nothing"


def single_process(recipe: str, model: Path, data: list[str], out: Path, *flags: str) -> Path:
    """The same run in this process, with batches of 4 (the 2-process run's global batch)."""
    run_sft(recipe, *data, *COMMON, *flags, model_name_or_path=model, output_dir=out, per_device_train_batch_size=4)
    return out


@pytest.mark.parametrize(
    "arch, recipe",
    [("llava-1.5", "tiny-cpu-instruct"), ("minigpt4", "tiny-cpu-instruct-lora")],
    ids=["llava-full", "minigpt4-lora"],
)
def test_ddp_equals_one_process_and_its_checkpoint_resumes_in_one_process(arch, recipe, built, data, tmp_path):
    """Gradient checkpointing is on (the recipes' default) with the tower frozen; rank 1 sees text only."""
    saves = ["--save_strategy", "steps", "--save_steps", "2"]
    flags = [*data, *COMMON, *saves, "--per_device_train_batch_size", "2"]
    launch(
        "ddp",
        "--config",
        recipe,
        "--model_name_or_path",
        str(built[arch]),
        *flags,
        "--output_dir",
        "ddp",
        cwd=tmp_path,
    )
    reference = single_process(recipe, built[arch], data, tmp_path / "one")
    start = load_file(built[arch] / "model.safetensors")
    if recipe.endswith("lora"):  # the adapter starts at B = 0: compare with the adapter after step 2
        start = weights(tmp_path / "ddp" / "checkpoint-2")
    assert_same_weights(tmp_path / "ddp", reference, start)

    # The 2-process run's checkpoint-2, resumed by one process (batches of 4), ends at the same weights.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (tmp_path / "ddp" / "checkpoint-2").rename(resumed / "checkpoint-2")
    run_sft(
        recipe, *data, *COMMON, *saves, model_name_or_path=built[arch], output_dir=resumed,
        per_device_train_batch_size=4, resume_from_checkpoint="true",
    )  # fmt: skip
    assert_same_weights(resumed, reference, start)


def test_qlora_with_ddp(built, data, tmp_path):
    flags = [*data, *COMMON, "--per_device_train_batch_size", "2"]
    model = built["llava-1.5"]
    launch(
        "ddp",
        "--config",
        "tiny-cpu-instruct-qlora",
        "--model_name_or_path",
        str(model),
        *flags,
        "--output_dir",
        "ddp",
        cwd=tmp_path,
    )
    reference = single_process(
        "tiny-cpu-instruct-qlora", model, data, tmp_path / "one", "--save_strategy", "steps", "--save_steps", "1"
    )
    # The adapter trains in bf16 beside the 4-bit weights (TRL's QLoRA), where AdamW turns rounding noise in tiny
    # gradients into whole steps: single values may differ, the update as a whole agrees (measured: 1% of its norm).
    start, got, want = weights(tmp_path / "one" / "checkpoint-1"), weights(tmp_path / "ddp"), weights(reference)
    assert got.keys() == want.keys()
    update = torch.cat([(want[k].float() - start[k].float()).flatten() for k in want])
    difference = torch.cat([(got[k].float() - want[k].float()).flatten() for k in want])
    assert update.norm() > 0 and difference.norm() <= 0.05 * update.norm(), (difference.norm(), update.norm())


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is not installed (pip install minillava[deepspeed])")
@pytest.mark.parametrize(
    "config, arch, recipe", [("zero2", "llava-1.5", "tiny-cpu-align"), ("zero3", "minigpt4", "tiny-cpu-instruct")]
)
def test_deepspeed_zero_equals_one_process(config, arch, recipe, built, data, tmp_path):
    """LLaVA-1.5's settings: ZeRO-2 for the stage-1 alignment, ZeRO-3 for stage 2. Under ZeRO-3 the rank with a
    text-only batch still runs the (sharded) vision path, or the other rank would wait for it forever; the saved
    model is gathered into one safetensors file under the same key names as a single-process run's."""
    flags = [*data, *COMMON, "--per_device_train_batch_size", "2", "--gradient_checkpointing", "false"]
    launch(
        config,
        "--config",
        recipe,
        "--model_name_or_path",
        str(built[arch]),
        *flags,
        "--output_dir",
        "out",
        cwd=tmp_path,
    )
    reference = single_process(recipe, built[arch], data, tmp_path / "one", "--gradient_checkpointing", "false")
    assert_same_weights(tmp_path / "out", reference, load_file(built[arch] / "model.safetensors"))
    assert not list((tmp_path / "out").glob("global_step*")), "DeepSpeed's own shards are for resuming checkpoints"


def test_accelerate_cpu_flag_refuses_to_train_one_process_alone(built, data, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "-m",
               "minillava.train.training.sft", "--config", "tiny-cpu-instruct", "--model_name_or_path", str(built["minigpt4"]),
               *data, "--output_dir", "out"]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode != 0
    assert "accelerate launch --cpu starts one process" in result.stderr
    assert "minillava sft --launch ddp --num_processes N" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on GPUs; this checks the CPU-only refusal")
@pytest.mark.parametrize("use_cpu", ["true", "false"])
def test_fsdp_on_a_machine_without_gpus_is_refused(use_cpu, built, data, tmp_path):
    """With --use_cpu accelerate would run DDP instead, without it two unrelated single-process runs."""
    args = ["--config", "tiny-cpu-instruct", "--use_cpu", use_cpu, "--model_name_or_path", str(built["minigpt4"])]
    result = launch("fsdp2", *args, *data, "--output_dir", "out", cwd=tmp_path, expect_ok=False)
    assert result.returncode != 0
    assert "accelerate runs FSDP on GPUs (and other accelerators) only" in result.stderr
    assert "use the ddp config" in result.stderr
    assert not (tmp_path / "out").exists()


def test_shipped_launch_configs(tmp_path):
    """Each config is an accelerate config of the kind its name says; the DeepSpeed ones name LLaVA-1.5's settings,
    which `--launch` finds from any directory."""
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp2": "FSDP"}
    for name, kind in kinds.items():
        path = resolve_launch_config(name)
        config = load_config_from_file(path)
        assert str(config.distributed_type).endswith(kind), (name, config.distributed_type)
        assert launch_command(path, "2", ["--config", "x"])[-4:] == [
            "-m",
            "minillava.train.training.sft",
            "--config",
            "x",
        ]
    assert load_config_from_file(resolve_launch_config("fsdp2")).fsdp_config["fsdp_version"] == 2
    for stage in (2, 3):
        file = yaml.safe_load(Path(resolve_launch_config(f"zero{stage}")).read_text())["deepspeed_config"]
        settings = Path(resolve_launch_config(f"zero{stage}")).parent / Path(file["deepspeed_config_file"]).name
        zero = yaml.safe_load(settings.read_text())["zero_optimization"]
        assert zero["stage"] == stage and zero["overlap_comm"] and zero["contiguous_gradients"]
    with pytest.raises(FileNotFoundError, match="--launch 'zero4' is neither a file nor a shipped accelerate config"):
        resolve_launch_config("zero4")


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_fsdp2_of_torch_on_cpu_equals_one_process(arch, built, tmp_path):
    """accelerate runs FSDP on GPUs only, but torch's FSDP2 itself runs over gloo on the CPU: each layer the model
    names in `_no_split_modules` is a unit, the frozen vision tower included, and the rank with text-only samples
    still joins the tower's all-gathers (without the blank image it waits forever). 3 AdamW steps of the stage-2
    model end at the weights of one process accumulating both half-batches."""
    script = str(Path(__file__).parent / "scripts" / "fsdp2_steps.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
    for command, name in ((torchrun, "fsdp2"), ([sys.executable], "one")):
        out = str(tmp_path / f"{name}.safetensors")
        result = subprocess.run(
            [*command, script, str(built[arch]), out], env=env, capture_output=True, text=True, timeout=TIMEOUT
        )
        assert result.returncode == 0, result.stderr[-6000:]
    sharded, one = load_file(tmp_path / "fsdp2.safetensors"), load_file(tmp_path / "one.safetensors")
    assert sharded.keys() == one.keys()
    for key in one:
        torch.testing.assert_close(sharded[key], one[key], atol=1e-6, rtol=0)
    start = load_file(built[arch] / "model.safetensors")
    assert max((one[k] - start[k]).abs().max().item() for k in one if k in start) > 1e-4, "the steps trained"
