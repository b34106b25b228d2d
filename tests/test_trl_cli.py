"""The plain TRL path on saved minillava folders of both architectures: the real `trl sft` CLI, run as the README
gives it (`trl sft --model_name_or_path FOLDER --trust_remote_code ...`), in processes where minillava cannot be
imported (the training process that the CLI starts through `accelerate launch` included).

- Stage 2 with LoRA: `--use_peft` needs no `--lora_target_modules`: the folder's code enters its model type in PEFT's
  default targets, which adapt the language model's linear layers only (never the vision tower, the connector, the
  Q-Former or `lm_head`).
- Stage 1: `--use_peft --lora_target_modules dummy-target-modules --lora_modules_to_save CONNECTOR` trains the
  connector alone.
- The loss is on the answers (and their end-of-turn token) only: by TRL's default for prompt/completion datasets,
  with `--assistant_only_loss true` for messages datasets (TRL has no hook that makes it the default there). The
  first logged loss equals the answer-only loss computed here on the same weights and samples, and not the loss over
  every token (what TRL computes for messages without the flag).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from sft_helpers import ANSWERS, build_tiny_models, env_without_minillava
from tiny import make_image
from transformers import AutoModelForImageTextToText, AutoProcessor

import minillava.modeling  # noqa: F401  (the Auto classes, for the reference losses computed in this process)
from minillava.modeling.modeling_base import LORA_TARGET_MODULES


TRL = Path(sys.executable).with_name("trl")  # the console script that `pip install trl` puts beside the interpreter
ARCHS = ("llava-1.5", "minigpt4")
CONNECTOR = {"llava-1.5": "multi_modal_projector", "minigpt4": "language_projection"}
# The README's `trl sft` flags, less the data, output and hyperparameter flags: per stage, and per dataset format for
# the loss.
STAGE_FLAGS = {
    "instruct-lora": lambda arch: ["--use_peft"],
    "align": lambda arch: [
        "--use_peft",
        "--lora_target_modules",
        "dummy-target-modules",
        "--lora_modules_to_save",
        CONNECTOR[arch],
    ],
}
LOSS_FLAGS = {"messages": ["--assistant_only_loss", "true"], "prompt-completion": []}
# One optimizer step on the whole dataset (one batch): the logged loss is the initial weights' loss on every sample.
# The step's log reaches `checkpoint-1/trainer_state.json` at full precision (the printed log keeps 4 digits).
TINY_RUN = [
    "--max_steps",
    "1",
    "--per_device_train_batch_size",
    "4",
    "--learning_rate",
    "1e-2",
    "--logging_steps",
    "1",
    "--save_strategy",
    "steps",
    "--save_steps",
    "1",
    "--report_to",
    "none",
    "--use_cpu",
]
# (architecture, stage, dataset format). Each run costs two Python processes importing torch, transformers and TRL,
# most of this file's time, so each stage and format runs once, and each architecture in both stage 2 and a messages
# run (LLaVA-1.5's stage 1 is MiniGPT-4's command with its connector's name).
RUNS = [
    ("llava-1.5", "instruct-lora", "messages"),
    ("minigpt4", "instruct-lora", "prompt-completion"),
    ("minigpt4", "align", "messages"),
]
QUESTIONS = ["What is in the image?", "Describe this image in detail.", "How many shapes are there?", "Is it red?"]
LLAMA_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def samples() -> list[dict]:
    """A messages + images dataset: one image and one question per sample, a short answer."""
    return [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[i]}]},
                {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[i]}]},
            ],
            "images": [make_image(i, size=(24 + 2 * i, 20))],
        }
        for i in range(4)
    ]


def as_prompt_completion(row: dict) -> dict:
    """The same sample in TRL's conversational prompt/completion format."""
    return {"prompt": row["messages"][:1], "completion": row["messages"][1:], "images": row["images"]}


def reference_losses(folder: Path, rows: list[dict]) -> dict[str, float]:
    """The mean next-token loss of the model in `folder` on `rows` (one sample at a time, no padding) over the answer
    tokens (everything after the generation prompt: the answer and its end-of-turn token), and over every token."""
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    totals = {"answers": [0.0, 0], "all_tokens": [0.0, 0]}
    for row in rows:
        prompt = processor.apply_chat_template(row["messages"][:1], add_generation_prompt=True)
        text = processor.apply_chat_template(row["messages"])
        prompt_ids = processor(images=row["images"], text=[prompt], add_special_tokens=False)["input_ids"][0]
        inputs = processor(images=row["images"], text=[text], add_special_tokens=False, return_tensors="pt")
        ids = inputs["input_ids"][0]
        assert ids[: len(prompt_ids)].tolist() == list(prompt_ids), "the prompt must tokenize as a prefix"
        with torch.no_grad():
            logits = model(**inputs).logits[0, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")
        for name, kept in (("answers", losses[len(prompt_ids) - 1 :]), ("all_tokens", losses)):
            totals[name][0] += kept.sum().item()
            totals[name][1] += kept.numel()
    return {name: total / count for name, (total, count) in totals.items()}


def without_qformer_dropout(folder: Path) -> None:
    """Sets the Q-Former's dropout to 0, so that the logged loss is deterministic: under plain TRL the frozen
    Q-Former runs in train mode (MiniGPT-4 keeps it in eval mode; `minillava sft` does too)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["qformer_config"].update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Both architectures built and saved; the samples on disk in both formats (parquet folders, which
    `--dataset_name` loads)."""
    root = tmp_path_factory.mktemp("trl-cli")
    built = {arch: folder for arch, (folder, _) in build_tiny_models(root / "built").items()}
    without_qformer_dropout(built["minigpt4"])
    data = {"messages": root / "messages", "prompt-completion": root / "prompt-completion"}
    Dataset.from_list(samples()).to_parquet(str(data["messages"] / "train.parquet"))
    rows = [as_prompt_completion(row) for row in samples()]
    Dataset.from_list(rows).to_parquet(str(data["prompt-completion"] / "train.parquet"))
    return {"root": root, "built": built, "data": data}


@pytest.fixture(scope="module")
def runs(setup) -> dict[tuple[str, str, str], dict]:
    """The `trl sft` runs of `RUNS`, started at once (each in its own process group), with the reference losses
    computed here meanwhile."""
    started = {}
    try:
        for arch, stage, data_format in RUNS:
            workdir = setup["root"] / f"{arch}-{stage}-{data_format}"
            workdir.mkdir()
            env = {**env_without_minillava(workdir), "OMP_NUM_THREADS": "1"}
            command = [str(TRL), "sft", "--model_name_or_path", str(setup["built"][arch]), "--trust_remote_code"]
            command += ["--dataset_name", str(setup["data"][data_format]), "--output_dir", str(workdir / "out")]
            command += [*STAGE_FLAGS[stage](arch), *LOSS_FLAGS[data_format], *TINY_RUN]
            with open(workdir / "log.txt", "w") as log:
                process = subprocess.Popen(
                    command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            started[arch, stage, data_format] = (workdir, process, env)
        references = {arch: reference_losses(setup["built"][arch], samples()) for arch in ARCHS}
        results = {}
        for key, (workdir, process, env) in started.items():
            returncode = process.wait(timeout=600)
            log = (workdir / "log.txt").read_text()
            assert returncode == 0, f"trl sft {key} failed:\n{log[-4000:]}"
            out = workdir / "out"
            state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
            results[key] = {
                "workdir": workdir,
                "env": env,
                "losses": [entry["loss"] for entry in state["log_history"] if "loss" in entry],
                "reference": references[key[0]],
                "adapter_config": json.loads((out / "adapter_config.json").read_text()),
                "adapter": load_file(out / "adapter_model.safetensors"),
            }
    finally:  # a failure leaves no run behind: each run's process group (the CLI and its training process)
        for _, process, _ in started.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return results


def test_runs_use_the_folders_code_where_minillava_cannot_be_imported(runs):
    for key, run in runs.items():
        check = subprocess.run(
            [sys.executable, "-c", "import minillava"], cwd=run["workdir"], env=run["env"], capture_output=True
        )
        assert check.returncode != 0 and b"ModuleNotFoundError" in check.stderr, "minillava must not be importable"
        code = {path.name for path in (run["workdir"] / "modules").rglob("*.py")}
        assert {"modeling_base.py", "processing_minillava.py"} <= code, f"{key}: the folder's code did not run"


@pytest.mark.parametrize(("arch", "stage", "data_format"), RUNS)
def test_loss_is_on_the_answers_only(arch, stage, data_format, runs):
    run = runs[arch, stage, data_format]
    expected = run["reference"]
    assert abs(expected["answers"] - expected["all_tokens"]) > 1e-3, "the samples must tell the two losses apart"
    assert len(run["losses"]) == 1
    assert run["losses"][0] == pytest.approx(expected["answers"], abs=1e-4), (
        f"logged {run['losses'][0]}, answer-only {expected['answers']}, every token {expected['all_tokens']}"
    )


@pytest.mark.parametrize(("arch", "data_format"), [(arch, fmt) for arch, stage, fmt in RUNS if stage != "align"])
def test_use_peft_alone_adapts_every_linear_layer_of_the_language_model_and_nothing_else(arch, data_format, runs):
    run = runs[arch, "instruct-lora", data_format]
    assert run["adapter_config"]["target_modules"] == LORA_TARGET_MODULES
    assert not run["adapter_config"]["modules_to_save"]
    adapter = run["adapter"]
    assert adapter and all(key.startswith("base_model.model.model.language_model.layers.") for key in adapter)
    assert all(".lora_A." in key or ".lora_B." in key for key in adapter)
    adapted = {key.split(".lora_")[0] for key in adapter}
    assert {name.rsplit(".", 1)[-1] for name in adapted} == LLAMA_LINEARS
    assert len(adapted) == 2 * len(LLAMA_LINEARS), "each linear layer of both decoder layers"
    assert any(value.abs().sum() > 0 for key, value in adapter.items() if ".lora_B." in key), "LoRA trained"


@pytest.mark.parametrize(("arch", "data_format"), [(arch, fmt) for arch, stage, fmt in RUNS if stage == "align"])
def test_align_command_trains_the_connector_only(arch, data_format, runs, setup):
    initial = load_file(setup["built"][arch] / "model.safetensors")
    connector = {key for key in initial if key.startswith(f"model.{CONNECTOR[arch]}.")}
    adapter = runs[arch, "align", data_format]["adapter"]
    trained = {key.removeprefix("base_model.model."): value for key, value in adapter.items()}
    assert connector and set(trained) == connector, "the adapter holds the whole connector and nothing else"
    assert all(not torch.equal(trained[key], initial[key]) for key in connector), "every connector tensor moves"
