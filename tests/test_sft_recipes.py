"""The shipped YAML recipes: every one parses with `minillava sft`'s parser and holds the published hyperparameters."""

import pytest

from minillava.train.training.recipes import recipe_names, resolve_recipe
from minillava.train.training.sft import make_parser


# On a CPU machine: the GPU recipes ask for bf16 and tf32.
CPU = ["--use_cpu", "true", "--bf16", "false", "--tf32", "false"]

# (stage, learning rate, connector lr, per-device batch x accumulation, length, LoRA r / alpha, 4-bit)
PUBLISHED = {
    # LLaVA-1.5 paper Table 5; scripts/v1_5/{pretrain,finetune,finetune_lora}.sh (batch per device on 8 GPUs)
    "llava-1.5-align": ("align", 1e-3, None, 32, "1 epoch", None, False),
    "llava-1.5-instruct": ("instruct", 2e-5, None, 16, "1 epoch", None, False),
    "llava-1.5-instruct-lora": ("instruct", 2e-4, 2e-5, 16, "1 epoch", (128, 256), False),
    "llava-1.5-instruct-qlora": ("instruct", 2e-4, 2e-5, 16, "1 epoch", (128, 256), True),
    # MiniGPT-4 train_configs/minigpt4_stage{1_pretrain,2_finetune}.yaml
    "minigpt4-align": ("align", 1e-4, None, 64, 20000, None, False),
    "minigpt4-align-cc_sbu": ("align", 3e-5, None, 12, 1000, None, False),
    "minigpt4-instruct": ("instruct", 3e-5, None, 12, 1000, None, False),
    "minigpt4-instruct-lora": ("instruct", 2e-4, 3e-5, 12, 1000, (128, 256), False),
    "minigpt4-instruct-qlora": ("instruct", 2e-4, 3e-5, 12, 1000, (128, 256), True),
}


def parse(name: str, *flags: str):
    return make_parser().parse_args_and_config(["--config", resolve_recipe(name), *flags])


def test_every_recipe_is_listed():
    assert set(recipe_names()) == set(PUBLISHED) | {
        f"tiny-cpu-{s}" for s in ("align", "instruct", "instruct-lora", "instruct-qlora")
    } | {"demo-align", "demo-instruct"}


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_demo_recipes_run_on_cpu_in_their_stage(stage):
    script_args, training_args, _ = parse(f"demo-{stage}", "--model_name_or_path", "m", "--output_dir", "o")
    assert script_args.stage == stage
    assert training_args.use_cpu and not training_args.bf16 and training_args.save_strategy == "no"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_recipes(name):
    script_args, training_args, model_args = parse(name, *CPU)
    stage, lr, connector_lr, batch, length, lora, four_bit = PUBLISHED[name]
    assert script_args.stage == stage and training_args.learning_rate == lr
    assert script_args.connector_lr == connector_lr
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == batch
    if length == "1 epoch":
        assert training_args.num_train_epochs == 1 and training_args.max_steps == -1
        assert training_args.lr_scheduler_type == "cosine" and training_args.warmup_steps == 0.03
        assert training_args.weight_decay == 0 and training_args.max_length == 2048
    else:
        assert training_args.max_steps == length and training_args.weight_decay == 0.05
        assert training_args.lr_scheduler_type == "cosine_with_min_lr"
    assert model_args.use_peft == (lora is not None)
    if lora is not None:
        assert (model_args.lora_r, model_args.lora_alpha) == lora
    assert model_args.load_in_4bit == four_bit and (model_args.bnb_4bit_quant_type == "nf4")
    assert training_args.gradient_checkpointing and script_args.dataset_name and model_args.model_name_or_path


@pytest.mark.parametrize(
    "name", ["tiny-cpu-align", "tiny-cpu-instruct", "tiny-cpu-instruct-lora", "tiny-cpu-instruct-qlora"]
)
def test_tiny_recipes_run_on_cpu(name):
    script_args, training_args, model_args = parse(name, "--model_name_or_path", "m", "--output_dir", "o")
    assert training_args.use_cpu and not training_args.bf16 and training_args.report_to == ["auto"]
    assert training_args.dataloader_num_workers == 0 and training_args.max_steps > 0


def test_a_flag_overrides_the_recipe():
    _, training_args, _ = parse("llava-1.5-instruct", *CPU, "--learning_rate", "1e-5")
    assert training_args.learning_rate == 1e-5


def test_unknown_recipe_names_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="llava-1.5-align"):
        resolve_recipe("llava-2-align")
