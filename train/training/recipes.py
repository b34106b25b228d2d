"""What trains in each stage (align / instruct), per architecture: freezing, LoRA targets and 4-bit quantization."""

from __future__ import annotations

import logging
import re
import types
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from torch import nn


logger = logging.getLogger(__name__)

STAGES = ("align", "instruct")
RECIPES_FOLDER = "recipes"


@dataclass(frozen=True)
class ArchModules:
    """Module paths of one architecture by role, as named in the model (`model.named_modules()`)."""

    connector: tuple[str, ...]  # trains in both stages
    vision_tower: tuple[str, ...]  # frozen unless `tune_vision_tower`
    frozen: tuple[str, ...]  # never trains
    language_model: tuple[str, ...]  # trains in the instruct stage (fully, or through LoRA)
    lora_root: str  # LoRA targets are looked for below this module only


ARCH_MODULES = {
    # LLaVA-1.5: `mm_projector` (here `multi_modal_projector`) is the only module of stage 1 (`--tune_mm_mlp_adapter`).
    "minillava": ArchModules(
        connector=("model.multi_modal_projector",),
        vision_tower=("model.vision_tower",),
        frozen=(),
        language_model=("model.language_model", "lm_head"),
        lora_root="model.language_model",
    ),
    # MiniGPT-4: `llama_proj` (here `language_projection`) is the only trained module; the ViT, `ln_vision`, the
    # Q-Former and its query tokens are frozen in both of its stages.
    "minillava_minigpt4": ArchModules(
        connector=("model.language_projection",),
        vision_tower=("model.vision_tower",),
        frozen=("model.qformer", "model.query_tokens"),
        language_model=("model.language_model", "lm_head"),
        lora_root="model.language_model",
    ),
}


def arch_modules(model_or_type: nn.Module | str) -> ArchModules:
    """The [`ArchModules`] of a minillava model (or of its `model_type`)."""
    model_type = model_or_type if isinstance(model_or_type, str) else model_or_type.config.model_type
    if model_type not in ARCH_MODULES:
        raise ValueError(
            f"{model_type!r} is not a minillava model type ({', '.join(ARCH_MODULES)}); build one with `minillava build`."
        )
    return ARCH_MODULES[model_type]


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def check_stage(stage: str, use_peft: bool = False, quantized: bool = False, tune_vision_tower: bool = False) -> None:
    """Refuses the combinations that the two-stage recipe does not define."""
    if stage not in STAGES:
        raise ValueError(f"Unknown stage {stage!r}; choose one of {', '.join(STAGES)}.")
    if stage == "align" and (use_peft or quantized or tune_vision_tower):
        raise ValueError(
            "The align stage trains the connector alone, fully and unquantized: --use_peft, --load_in_4bit / "
            "--load_in_8bit and --tune_vision_tower belong to the instruct stage."
        )
    if quantized and not use_peft:
        raise ValueError("A quantized language model can only be trained through LoRA: add --use_peft (QLoRA).")


def trainable_modules(model: nn.Module, stage: str, tune_vision_tower: bool = False) -> tuple[str, ...]:
    """The module paths whose parameters train in `stage` when the whole model is tuned (no PEFT)."""
    modules = arch_modules(model)
    trainable = modules.connector
    if stage == "instruct":
        trainable += modules.language_model
    if tune_vision_tower:
        trainable += modules.vision_tower
    return trainable


def freeze_front_end(model: nn.Module, front_end: tuple[str, ...]) -> None:
    """Freezes the front-end modules named in `front_end` and keeps them in eval mode (no dropout) while the rest of
    the model trains (full tuning, LoRA and QLoRA alike: PEFT freezes them too, but only once it wraps the model).

    MiniGPT-4 does this for its ViT and Q-Former (`module.train = disabled_train`); the Trainer calls `model.train()`
    at every step, so their `train` is replaced by a no-op the same way.
    """
    for name, module in model.named_modules():
        if name in front_end:
            module.requires_grad_(False)
            module.eval()
            module.train = types.MethodType(lambda self, mode=True: self, module)


def set_trainable(model: nn.Module, stage: str, tune_vision_tower: bool = False) -> dict[str, int]:
    """Freezes `model` for `stage` (full tuning: no PEFT) and returns the trainable / frozen parameter counts.

    - `align`: the connector alone; vision tower and language model frozen.
    - `instruct`: the connector, the language model and `lm_head`; the vision tower too with `tune_vision_tower`.

    MiniGPT-4's Q-Former and query tokens never train.
    """
    modules = arch_modules(model)
    trainable = trainable_modules(model, stage, tune_vision_tower)
    for name, param in model.named_parameters():
        param.requires_grad_(_is_under(name, trainable) and not _is_under(name, modules.frozen))
    frozen_front_end = modules.frozen + (() if tune_vision_tower else modules.vision_tower)
    freeze_front_end(model, frozen_front_end)
    counts = {"trainable": 0, "frozen": 0}
    for param in model.parameters():
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    logger.info(
        "Stage %s: training %s (%d parameters), %d parameters frozen",
        stage,
        ", ".join(trainable),
        counts["trainable"],
        counts["frozen"],
    )
    return counts


def language_model_linear_names(model: nn.Module) -> list[str]:
    """The distinct leaf names of the linear layers of the language model (`q_proj`, `gate_proj`, ...)."""
    root = arch_modules(model).lora_root
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if name.startswith(root + ".") and isinstance(module, nn.Linear)
        }
    )


def lora_target_regex(model: nn.Module, names: str | list[str] | None = None) -> str:
    """A PEFT `target_modules` regex matching linear layers of the language model only, never the vision tower,
    the connector or `lm_head`.

    `names` are leaf names (`["q_proj", "v_proj"]`); None or `"all-linear"` takes every linear layer of the language
    model. PEFT full-matches a string `target_modules` against module paths, so the regex is anchored below
    `model.language_model`.
    """
    available = language_model_linear_names(model)
    if names is None or names == "all-linear" or names == ["all-linear"]:
        names = available
    elif isinstance(names, str):
        names = [names]
    unknown = sorted(set(names) - set(available))
    if unknown:
        raise ValueError(
            f"LoRA target modules {unknown} are not linear layers of the language model; its linear layers are "
            f"{available}."
        )
    root = re.escape(arch_modules(model).lora_root)
    return rf"{root}\..*\.({'|'.join(re.escape(name) for name in names)})"


def lora_config(model: nn.Module, model_args, tune_vision_tower: bool = False):
    """The LoRA config of the instruct stage: TRL's `get_peft_config(model_args)` (r, alpha, dropout, rsLoRA, DoRA,
    ...) with the targets restricted to the language model and the connector trained in full (`modules_to_save`)."""
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    modules = arch_modules(model)
    peft_config.target_modules = lora_target_regex(model, model_args.lora_target_modules)
    to_save = [name.rsplit(".", 1)[-1] for name in modules.connector]
    if tune_vision_tower:
        to_save += [name.rsplit(".", 1)[-1] for name in modules.vision_tower]
    for name in model_args.lora_modules_to_save or []:
        if name not in to_save:
            to_save.append(name)
    peft_config.modules_to_save = to_save
    return peft_config


def quantization_skip_modules(model_type: str) -> list[str]:
    """Modules left unquantized by bitsandbytes: the vision tower, the connector (and Q-Former) and `lm_head`.

    transformers matches these from the start of a module path (or as a suffix), so they are full paths; listing
    `lm_head` is needed because a user list replaces the default skip of the output layer (transformers#45674).
    """
    modules = arch_modules(model_type)
    return [*modules.vision_tower, *modules.connector, *modules.frozen, "lm_head"]


def quantization_config(model_args, model_type: str):
    """TRL's `get_quantization_config(model_args)` (NF4 4-bit or 8-bit) quantizing the language model only."""
    from trl import get_quantization_config

    config = get_quantization_config(model_args)
    if config is not None:
        config.llm_int8_skip_modules = quantization_skip_modules(model_type)
    return config


def shipped_folder(name: str = RECIPES_FOLDER) -> Path:
    """A folder of YAML files shipped in `minillava.hub_configs` (the recipes, the accelerate launch configs)."""
    folder = Path(str(resources.files("minillava.hub_configs") / name))
    if not folder.is_dir():
        raise FileNotFoundError(f"The {name} files of minillava.hub_configs are not installed (looked in {folder}).")
    return folder


def recipes_folder() -> Path:
    """The folder of the YAML recipes shipped in `minillava.hub_configs`."""
    return shipped_folder(RECIPES_FOLDER)


def recipe_names() -> list[str]:
    """The names of the shipped YAML recipes (`--config NAME`)."""
    return sorted(path.stem for path in recipes_folder().glob("*.yaml"))


def resolve_shipped(config: str, folder: str = RECIPES_FOLDER, flag: str = "--config") -> str:
    """`config` itself when it is a file, else the path of the YAML file called `config` in the shipped `folder`."""
    if Path(config).is_file():
        return config
    name = config[: -len(".yaml")] if config.endswith(".yaml") else config
    path = shipped_folder(folder) / f"{name}.yaml"
    if not path.is_file():
        names = sorted(item.stem for item in shipped_folder(folder).glob("*.yaml"))
        kind = "recipe" if folder == RECIPES_FOLDER else f"{folder} config"
        raise FileNotFoundError(
            f"{flag} {config!r} is neither a file nor a shipped {kind}; the shipped ones are: {', '.join(names)}."
        )
    return str(path)


def resolve_recipe(config: str) -> str:
    """`config` itself when it is a file, else the path of the shipped recipe called `config`."""
    return resolve_shipped(config)


__all__ = [
    "ARCH_MODULES",
    "STAGES",
    "ArchModules",
    "arch_modules",
    "check_stage",
    "freeze_front_end",
    "language_model_linear_names",
    "lora_config",
    "lora_target_regex",
    "quantization_config",
    "quantization_skip_modules",
    "resolve_shipped",
    "shipped_folder",
    "recipe_names",
    "recipes_folder",
    "resolve_recipe",
    "set_trainable",
    "trainable_modules",
]
