"""`minillava sft` on tiny models (CPU): what each stage trains, LoRA + merge, QLoRA, resume, the Hub-ready folders."""

import json

import pytest
import torch
from safetensors import safe_open
from sft_helpers import build_tiny_models, image_inputs, run_sft, snapshot, write_llava_dataset
from transformers import AutoModelForImageTextToText, TrainerCallback

from minillava.train.training.merge import main as merge_main
from minillava.train.training.recipes import arch_modules


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path, images = write_llava_dataset(tmp_path_factory.mktemp("data"), num_samples=8)
    return ["--dataset_name", str(path), "--image_folder", str(images)]


def load(folder):
    return AutoModelForImageTextToText.from_pretrained(folder).eval()


def under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Snapshots(TrainerCallback):
    """Parameters of the model the Trainer trains, when training starts (after PEFT wrapping)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        self.trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self.frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}

    def moved(self):
        params = dict(self.model.named_parameters())
        return {n for n, before in self.trainable.items() if not torch.equal(params[n], before)}

    def frozen_unchanged(self):
        params = dict(self.model.named_parameters())
        return all(torch.equal(params[n], before) for n, before in self.frozen.items())


@pytest.fixture(scope="module")
def aligned(built, data, tmp_path_factory):
    """The stage-1 output of each architecture (4 steps of the tiny align recipe)."""
    outputs = {}
    for arch, (folder, _) in built.items():
        out = tmp_path_factory.mktemp(f"align-{arch}")
        run_sft("tiny-cpu-align", *data, model_name_or_path=folder, output_dir=out)
        outputs[arch] = out
    return outputs


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_align_trains_the_connector_only_then_instruct_trains_the_language_model(arch, built, aligned, data, tmp_path):
    modules = arch_modules(load(built[arch][0]))
    before, after = snapshot(load(built[arch][0])), snapshot(load(aligned[arch]))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(under(name, modules.connector) for name in changed)
    assert changed == {name for name in before if under(name, modules.connector)}, "every connector tensor moves"

    trainer, metrics = run_sft(
        "tiny-cpu-instruct",
        *data,
        model_name_or_path=aligned[arch],
        output_dir=tmp_path,
        max_steps=2,
        learning_rate=1e-3,
    )
    assert metrics["train_loss"] > 0
    final = snapshot(load(tmp_path))
    changed = {name for name in after if not torch.equal(after[name], final[name])}
    trainable = {name for name in after if under(name, modules.connector + modules.language_model)}
    assert changed == trainable, "instruct: the connector and every language-model tensor train"
    assert all(torch.equal(after[n], final[n]) for n in after if under(n, modules.vision_tower + modules.frozen))
    card = (tmp_path / "README.md").read_text()
    assert "stage **instruct**" in card and "| train_loss |" in card and "trust_remote_code=True" in card
    if arch == "minigpt4":  # the Q-Former stays frozen and in eval mode (no dropout) as in MiniGPT-4
        assert not trainer.model.model.qformer.training and trainer.model.model.language_model.training


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_lora_with_gradient_checkpointing_trains_every_trainable_tensor_and_merges(arch, aligned, data, tmp_path):
    snapshots = Snapshots()
    out = tmp_path / "lora"
    trainer, _ = run_sft(
        "tiny-cpu-instruct-lora",
        *data,
        callbacks=[snapshots],
        model_name_or_path=aligned[arch],
        output_dir=out,
        max_steps=3,
        learning_rate=1e-2,
        connector_lr=1e-3,
    )
    assert trainer.args.gradient_checkpointing
    modules = arch_modules(trainer.model.get_base_model())
    connector = modules.connector[0].rsplit(".", 1)[-1]
    lora = [n for n in snapshots.trainable if "lora_" in n]
    assert lora and all(".model.language_model." in n for n in lora), "LoRA sits on the language model only"
    assert any(f".{connector}.modules_to_save." in n for n in snapshots.trainable)
    assert set(snapshots.trainable) == {n for n in snapshots.trainable if "lora_" in n or "modules_to_save" in n}
    assert snapshots.moved() == set(snapshots.trainable), "every trainable tensor moves"
    assert snapshots.frozen_unchanged()
    trainer.model.train()
    named = dict(trainer.model.get_base_model().named_modules())
    front_end = [named[name] for name in modules.frozen + modules.vision_tower if name in named]
    assert front_end
    assert not any(module.training for module in front_end), "no dropout in the frozen tower (and Q-Former)"
    lrs = {group["initial_lr"] for group in trainer.optimizer.param_groups}
    assert lrs == {1e-2, 1e-3}, "the connector has its own learning rate"

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as adapter:
        keys = list(adapter.keys())
    assert any(connector in key for key in keys), "the adapter carries the connector"
    assert not any("vision_tower" in key for key in keys)

    model = trainer.model.eval()
    inputs = image_inputs(trainer.processing_class)
    with torch.no_grad():
        expected = model(**inputs).logits
    merged_dir = tmp_path / "merged"
    merge_main([str(out), "--output-dir", str(merged_dir)])
    merged = load(merged_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "processing_minillava.py").is_file()


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_qlora_on_cpu_quantizes_the_language_model_only(arch, aligned, data, tmp_path):
    import bitsandbytes as bnb

    snapshots = Snapshots()
    trainer, metrics = run_sft(
        "tiny-cpu-instruct-qlora",
        *data,
        callbacks=[snapshots],
        model_name_or_path=aligned[arch],
        output_dir=tmp_path,
        max_steps=3,
        learning_rate=1e-2,
        connector_lr=1e-2,
    )
    base = trainer.model.get_base_model()
    modules = arch_modules(base)
    quantized = {n for n, m in base.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linears = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n}
    assert quantized and all(n.startswith("model.language_model.") for n in quantized)
    assert all(under(n, modules.language_model) for n in quantized)
    unquantized = {
        n for n in linears - quantized if under(n, modules.vision_tower + modules.connector + modules.frozen)
    }
    assert unquantized and all(base.get_submodule(n).weight.dtype != torch.uint8 for n in unquantized)
    assert "lm_head" not in quantized
    assert snapshots.moved() == set(snapshots.trainable) and snapshots.frozen_unchanged()
    assert any("modules_to_save" in n for n in snapshots.moved()), "the connector trains"
    assert metrics["train_loss"] > 0
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["modules_to_save"] == [modules.connector[0].rsplit(".", 1)[-1]]
    assert "quantization" in (tmp_path / "README.md").read_text()


class Crash(TrainerCallback):
    """Kills the run at the start of step `at`, after the checkpoint of the step before it was saved."""

    def __init__(self, at: int):
        self.at = at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt(f"killed at step {self.at}")


RESUME_RECIPES = {"full": "tiny-cpu-instruct", "lora": "tiny-cpu-instruct-lora", "qlora": "tiny-cpu-instruct-qlora"}


@pytest.mark.parametrize("mode", sorted(RESUME_RECIPES))
def test_killed_run_resumes_to_the_same_loss_and_weights(mode, aligned, data, tmp_path):
    recipe = RESUME_RECIPES[mode]
    common = {"model_name_or_path": aligned["llava-1.5"], "max_steps": 4, "learning_rate": 1e-3}
    straight, _ = run_sft(recipe, *data, **common, output_dir=tmp_path / "straight")
    checkpointing = {"output_dir": tmp_path / "killed", "save_strategy": "steps", "save_steps": 2}
    with pytest.raises(KeyboardInterrupt):
        run_sft(recipe, *data, **common, **checkpointing, callbacks=[Crash(at=2)])
    assert (tmp_path / "killed" / "checkpoint-2").is_dir()
    with pytest.raises(ValueError, match="No valid checkpoint found"):
        run_sft(recipe, *data, **common, output_dir=tmp_path / "empty", resume_from_checkpoint="true")
    resumed, _ = run_sft(recipe, *data, **common, **checkpointing, resume_from_checkpoint="true")

    def losses(trainer):
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert resumed.state.global_step == 4
    assert losses(resumed)[-2:] == pytest.approx(losses(straight)[-2:], rel=1e-5)
    expected = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpoints_are_self_contained_folders(aligned, data, tmp_path):
    run_sft(
        "tiny-cpu-instruct",
        *data,
        model_name_or_path=aligned["llava-1.5"],
        output_dir=tmp_path,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
    )
    for folder in (tmp_path, tmp_path / "checkpoint-1"):
        names = {p.name for p in folder.iterdir()}
        assert {"model.safetensors", "config.json", "processor_config.json", "chat_template.jinja"} <= names
        assert {
            "modeling_minillava.py",
            "modeling_base.py",
            "configuration_minillava.py",
            "processing_minillava.py",
        } <= names
        assert not {n for n in names if n.endswith((".bin", ".pth")) and n.startswith(("model", "pytorch_model"))}
    assert "stage **instruct**" in (tmp_path / "README.md").read_text()


def test_tensorboard_logs_when_asked(aligned, data, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed (pip install tensorboard)")
    run_sft(
        "tiny-cpu-align",
        *data,
        model_name_or_path=aligned["llava-1.5"],
        output_dir=tmp_path,
        max_steps=1,
        report_to="tensorboard",
    )
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_refused_combinations(aligned, data, tmp_path):
    common = {"model_name_or_path": aligned["llava-1.5"], "output_dir": tmp_path}
    with pytest.raises(ValueError, match="align stage trains the connector alone"):
        run_sft("tiny-cpu-align", *data, **common, use_peft="true")
    with pytest.raises(ValueError, match="only be trained through LoRA"):
        run_sft("tiny-cpu-instruct", *data, **common, load_in_4bit="true")
    with pytest.raises(ValueError, match="not linear layers of the language model"):
        run_sft("tiny-cpu-instruct-lora", *data, **common, lora_target_modules="fc1")


def test_tune_vision_tower_trains_the_tower_too(aligned, data, tmp_path):
    run_sft(
        "tiny-cpu-instruct",
        *data,
        model_name_or_path=aligned["llava-1.5"],
        output_dir=tmp_path,
        max_steps=2,
        learning_rate=1e-3,
        tune_vision_tower="true",
    )
    before, after = snapshot(load(aligned["llava-1.5"])), snapshot(load(tmp_path))
    tower = {name for name in before if name.startswith("model.vision_tower.")}
    changed = {name for name in tower if not torch.equal(before[name], after[name])}
    # LLaVA reads the second-to-last layer: the last encoder layer and post_layernorm get no gradient, by design
    unused = {name for name in tower if ".layers.1." in name or "post_layernorm" in name}
    assert changed == tower - unused


def test_python_api_trains_on_an_in_memory_dataset(built, tmp_path, caplog):
    from datasets import Dataset
    from tiny import make_image
    from trl import ModelConfig, SFTConfig

    from minillava.train.training.sft import SFTScriptArguments, train

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]
    unanswered = messages[:1]
    dataset = Dataset.from_dict(
        {
            "id": [f"row-{i}" for i in range(5)],
            "messages": [messages] * 4 + [unanswered],
            "images": [[make_image(i)] for i in range(5)],
        }
    )
    trainer, metrics = train(
        SFTScriptArguments(stage="align"),
        SFTConfig(
            output_dir=str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=2,
            learning_rate=1e-3,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            dataloader_num_workers=0,
        ),
        ModelConfig(model_name_or_path=str(built["minigpt4"][0])),
        train_dataset=dataset,
    )
    assert metrics["train_loss"] > 0 and metrics["train_samples_per_second"] > 0
    assert trainer.run_info["dataset_name"] == "in-memory dataset" and trainer.run_info["num_samples"] == 4
    assert (tmp_path / "model.safetensors").is_file()
    skipped = json.loads((tmp_path / "skipped_samples.json").read_text())
    assert skipped["total"] == 5 and [s["id"] for s in skipped["skipped"]] == ["row-4"]
    assert "Skipping 1 of 5 samples (1 no assistant turn)" in caplog.text


def test_evaluation_on_the_test_split_of_a_saved_dataset(built, tmp_path):
    from datasets import Dataset, DatasetDict
    from tiny import make_image

    def split(n):
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
        ]
        return Dataset.from_dict({"messages": [messages] * n, "images": [[make_image(i)] for i in range(n)]})

    DatasetDict({"train": split(4), "test": split(2)}).save_to_disk(tmp_path / "data")
    trainer, _ = run_sft(
        "tiny-cpu-align",
        model_name_or_path=built["llava-1.5"][0],
        dataset_name=tmp_path / "data",
        output_dir=tmp_path / "out",
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
    )
    (evaluation,) = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluation["eval_loss"] > 0 and evaluation["step"] == 2
