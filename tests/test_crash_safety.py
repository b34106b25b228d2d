"""Nothing lost: a `minillava sft` killed with SIGKILL (at a random step, or in the middle of a checkpoint save) resumes
from its newest complete checkpoint to the weights of the uninterrupted run; a full disk refuses the save and keeps the
previous checkpoint; two runs never share an output folder; no pickle and no token is written, and the pickles the
Trainer reads back for resuming are read with `weights_only=True`."""

import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sft_helpers import build_tiny_models, run_sft, write_llava_dataset

from minillava.train.checkpoints import checkpoint_problem, last_complete_checkpoint
from minillava.train.training.data import SkippedSample, SkipReport
from minillava.train.training.output_dir import LOCK_NAME
from minillava.train.training.trainer import MiniLlavaSFTTrainer


ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_secretTokenThatMustNeverBeWritten0123"

# `minillava sft ARGV...` in a child process; with KILL_DURING_SAVE=checkpoint-N it sends itself SIGKILL while the
# optimizer state of that checkpoint is half-written.
CHILD = r"""
import os, signal, sys
target = os.environ.get("KILL_DURING_SAVE")
if target:
    import torch
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt") and target in str(f):
            with open(f, "wb") as file:
                file.write(b"PK\x03\x04 half an optimizer state")
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
from minillava.train.training.sft import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))["llava-1.5"][0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path, images = write_llava_dataset(tmp_path_factory.mktemp("data"), num_samples=8)
    return ["--dataset_name", str(path), "--image_folder", str(images)]


def argv(model, data, output_dir, **options) -> list[str]:
    options = {"model_name_or_path": model, "output_dir": output_dir, "learning_rate": 1e-3, **options}
    flags = [item for key, value in options.items() for item in (f"--{key}", str(value))]
    return ["--config", "tiny-cpu-instruct", *data, *flags]


def start_child(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def trainable(trainer) -> dict[str, torch.Tensor]:
    return {name: param for name, param in trainer.model.named_parameters() if param.requires_grad}


def assert_same_weights(got, expected) -> None:
    got, expected = trainable(got), trainable(expected)
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


@pytest.fixture(scope="module")
def straight(model, data, tmp_path_factory):
    """The uninterrupted run of 6 steps the killed runs are compared with."""
    trainer, _ = run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=6, learning_rate=1e-3,
                         output_dir=tmp_path_factory.mktemp("straight"))  # fmt: skip
    return trainer


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_and_resume_takes_it(
    model, data, straight, tmp_path, caplog
):
    out = tmp_path / "run"
    child = start_child(argv(model, data, out, max_steps=6, save_strategy="steps", save_steps=2),
                        KILL_DURING_SAVE="checkpoint-4")  # fmt: skip
    log, _ = child.communicate(timeout=600)
    assert child.returncode == -signal.SIGKILL, log
    assert checkpoint_problem(out / "checkpoint-2") is None
    assert not (out / "checkpoint-4").exists(), "a half-written save carries a checkpoint's name"
    assert (out / ".partial-checkpoint-4").is_dir()
    # A half-written checkpoint of an older minillava (or another tool) under a checkpoint's own name:
    (out / "checkpoint-5").mkdir()
    shutil.copy(out / "checkpoint-2" / "model.safetensors", out / "checkpoint-5" / "model.safetensors")
    assert last_complete_checkpoint(out) == out / "checkpoint-2"
    # A sample whose image failed to decode before the kill stays reported after the resume.
    killed = SkippedSample("sample-3", "data.json:12", "unreadable image", "truncated PNG")
    SkipReport(total=8, skipped=[killed]).save(out / "skipped_samples.json")

    with caplog.at_level(logging.INFO):
        resumed, _ = run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=6, learning_rate=1e-3,
                             output_dir=out, save_strategy="steps", save_steps=2, resume_from_checkpoint="true")  # fmt: skip
    messages = caplog.text
    assert "Not resuming from" in messages and "checkpoint-5: no trainer_state.json" in messages
    assert "Taking over" in messages  # the lock of the killed run
    assert f"Resuming from {out / 'checkpoint-2'}" in messages
    assert not list(out.glob(".partial-*")) and not (out / LOCK_NAME).exists()
    assert resumed.state.global_step == 6
    assert_same_weights(resumed, straight)
    assert killed in SkipReport.load(out / "skipped_samples.json").skipped
    assert resumed.run_info["num_skipped"] == 1


def test_sigkill_at_a_random_step_then_resume_gives_the_uninterrupted_weights(model, data, straight, tmp_path):
    out = tmp_path / "run"
    seed = random.randrange(10**6)
    pick = random.Random(seed)
    step, delay = pick.randint(1, 4), pick.uniform(0.0, 0.05)
    child = start_child(argv(model, data, out, max_steps=6, save_strategy="steps", save_steps=1))
    deadline = time.monotonic() + 300
    while not (out / f"checkpoint-{step}").is_dir() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    log, _ = child.communicate(timeout=60)
    where = f"killed after checkpoint-{step} + {delay * 1000:.0f} ms (seed {seed})"
    assert child.returncode == -signal.SIGKILL, f"{where}: the run was not killed\n{log}"
    newest = last_complete_checkpoint(out)
    assert newest is not None and int(newest.name.split("-")[1]) >= step, f"{where}: newest complete is {newest}"
    resumed, _ = run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=6, learning_rate=1e-3,
                         output_dir=out, save_strategy="steps", save_steps=1, resume_from_checkpoint="true")  # fmt: skip
    assert resumed.state.global_step == 6, where
    assert_same_weights(resumed, straight)


class Exploit:
    """Unpickled by a `torch.load` without `weights_only`, it creates the file `marker`."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_reads_the_local_pickles_with_weights_only(name, model, data, tmp_path):
    out = tmp_path / "run"
    run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=1, output_dir=out,
            save_strategy="steps", save_steps=1)  # fmt: skip
    marker = tmp_path / "code-ran"
    torch.save(Exploit(str(marker)), out / "checkpoint-1" / name)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global|UnpicklingError"):
        run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=2, output_dir=out,
                resume_from_checkpoint="true")  # fmt: skip
    assert not marker.exists(), f"{name} was unpickled without weights_only"


def test_no_pickle_and_no_token_in_any_folder(model, data, tmp_path):
    for recipe, out in (("tiny-cpu-instruct", tmp_path / "full"), ("tiny-cpu-instruct-lora", tmp_path / "lora")):
        run_sft(recipe, *data, model_name_or_path=model, max_steps=2, output_dir=out, save_strategy="steps",
                save_steps=1, hub_token=SECRET)  # fmt: skip
        files = files_under(out)
        assert not [path for path in files if path.name == "training_args.bin"]
        assert not [path for path in files if SECRET.encode() in path.read_bytes()]
        for folder in (out, out / "checkpoint-2"):
            saved = json.loads((folder / "training_args.json").read_text())
            assert saved["hub_token"] == "<HUB_TOKEN>" and saved["max_steps"] == 2


def test_a_second_live_run_on_the_same_output_dir_is_refused(model, data, tmp_path):
    out = tmp_path / "run"
    first = start_child(argv(model, data, out, max_steps=200))
    deadline = time.monotonic() + 300
    while not (out / LOCK_NAME).exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert first.poll() is None, "the first run ended early"
        owner = json.loads((out / LOCK_NAME).read_text())
        with pytest.raises(RuntimeError, match=f"in use by another run \\(pid {owner['pid']} on "):
            run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=1, output_dir=out)
    finally:
        first.kill()
        first.communicate()


def test_an_output_dir_with_another_runs_results_is_refused_unless_overwrite_or_resume(model, data, tmp_path):
    out = tmp_path / "run"
    run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=1, output_dir=out)
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match="already holds the results of another run .*--overwrite_output_dir"):
        run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=1, output_dir=out)
    assert (out / "model.safetensors").read_bytes() == before
    run_sft("tiny-cpu-instruct", *data, "--overwrite_output_dir", model_name_or_path=model, max_steps=3,
            output_dir=out)  # fmt: skip
    assert (out / "model.safetensors").read_bytes() != before
    assert json.loads((out / "training_args.json").read_text())["max_steps"] == 3


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of `request.param` (a tiny checkpoint takes 650 kB, and the estimate adds a tenth and 1 MiB)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    size = request.param
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # also when a file there is still open


@pytest.mark.parametrize(
    "check, small_disk",
    [("estimated", "2m"), ("written", "1m")],  # estimated: the second save is refused before it starts
    indirect=["small_disk"],
)
def test_a_full_disk_refuses_the_save_and_keeps_the_previous_checkpoint(check, model, data, small_disk, monkeypatch):
    if check == "written":  # no estimate: the save itself meets ENOSPC
        monkeypatch.setattr(MiniLlavaSFTTrainer, "_check_space", staticmethod(lambda folder, size: None))
    out = small_disk / "run"
    with pytest.raises(OSError, match=f"no space left on {out}: need .* MiB, have .* MiB") as raised:
        run_sft("tiny-cpu-instruct", *data, model_name_or_path=model, max_steps=4, output_dir=out,
                save_strategy="steps", save_steps=1)  # fmt: skip
    assert (out / "checkpoint-1").is_dir(), f"the first checkpoint was not written: {raised.value}"
    assert checkpoint_problem(out / "checkpoint-1") is None
    assert not (out / "checkpoint-2").exists() and last_complete_checkpoint(out) == out / "checkpoint-1"
    assert not list(out.glob(".partial-*")), "the failed save was left behind"
    if check == "written":
        assert "checkpoint-2 was not written, the previous checkpoint is still the one to resume from" in str(
            raised.value
        )
