"""Compose a minillava model and processor from pretrained parts (a vision encoder and a causal LM) and save them."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    Blip2QFormerModel,
    Blip2VisionModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from minillava.modeling import (
    MiniGPT4Config,
    MiniGPT4ForConditionalGeneration,
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
    MiniVLMForConditionalGeneration,
)
from minillava.modeling.modeling_minillava import MiniLlavaMultiModalProjector
from minillava.processing.chat_templates import get_chat_template, turn_separator
from minillava.processing.image_processing import make_image_processor
from minillava.processing.processing_minillava import MiniLlavaProcessor

from ..checkpoints import load_exact, load_tensors, strip_prefix


logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
# Presets may name the demo's pretrained tiny parts (built reproducibly, offline, on first use) instead of a path.
COMPONENT_PREFIX = "minillava-components:"

# What each architecture's recipe uses unless told otherwise (LLaVA-1.5 paper; MiniGPT-4 repository).
ARCH_DEFAULTS = {
    "llava-1.5": {
        "chat_template": "vicuna_v1",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "projector_type": "mlp2x_gelu",
    },
    "minigpt4": {"chat_template": "minigpt4_vicuna0", "num_query_tokens": None},
}


@dataclass
class BuildArguments:
    """What `minillava build` composes; any field left `None` takes the architecture's default."""

    output_dir: str = field(metadata={"help": "Where the model and processor are saved."})
    preset: str | None = field(default=None, metadata={"help": "A preset of hub_configs/ giving the fields below."})
    arch: str | None = field(default=None, metadata={"help": "Architecture: llava-1.5 or minigpt4."})
    vision_model: str | None = field(
        default=None,
        metadata={"help": "Vision encoder folder or Hub id (minigpt4: a BLIP-2 checkpoint: ViT, Q-Former, queries)."},
    )
    text_model: str | None = field(default=None, metadata={"help": "Causal language model folder or Hub id."})
    chat_template: str | None = field(
        default=None, metadata={"help": "vicuna_v1, plain, minigpt4_vicuna0, minigpt4_llama2, or 'lm' (the LM's own)."}
    )
    vision_feature_layer: int | None = field(default=None, metadata={"help": "llava-1.5: vision hidden layer used."})
    vision_feature_select_strategy: str | None = field(
        default=None, metadata={"help": "llava-1.5: 'default' drops CLS, 'full' keeps every token."}
    )
    projector_type: str | None = field(default=None, metadata={"help": "llava-1.5: mlp2x_gelu or linear."})
    num_query_tokens: int | None = field(
        default=None, metadata={"help": "minigpt4: must match the BLIP-2 checkpoint (read from it when not given)."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16, or auto (as saved)."})
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad the resized vocabulary to a multiple of this (llava-hf uses 64)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for the connector initialisation."})


def load_preset(name: str) -> dict:
    """A preset from `hub_configs/` by name (file name without `.json`)."""
    folder = resources.files("minillava.hub_configs")
    names = sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))
    if name not in names:
        raise ValueError(f"Unknown preset {name!r}; available presets: {', '.join(names)}")
    return json.loads((folder / f"{name}.json").read_text())


def parse_dtype(name: str) -> torch.dtype | str:
    return name if name == "auto" else getattr(torch, name)


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        # LLaVA pads with unk when the tokenizer has no pad token (Vicuna); add one only if there is no unk either
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})


def _supports_dtype_kwarg() -> bool:
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def from_pretrained_any_version(model_class, path: str, dtype):
    key = "dtype" if _supports_dtype_kwarg() else "torch_dtype"
    return model_class.from_pretrained(path, **{key: dtype})


def load_blip2_front_end(path: str, dtype) -> tuple[Blip2VisionModel, Blip2QFormerModel, torch.Tensor, int]:
    """The vision model, Q-Former and query tokens of a transformers BLIP-2 checkpoint (its LM is not loaded)."""
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "blip-2":
        raise ValueError(f"{path} is a {config.model_type!r} checkpoint; minigpt4 needs a BLIP-2 checkpoint")
    tensors = load_tensors(path, prefixes=("vision_model.", "qformer.", "query_tokens", "model."))
    tensors = strip_prefix(tensors, "model.") or tensors  # some layouts nest everything under `model.`
    vision = Blip2VisionModel(config.vision_config)
    load_exact(vision, strip_prefix(tensors, "vision_model."), f"{path} (vision_model.*)")
    qformer = Blip2QFormerModel(config.qformer_config)
    qformer_state = {k: v for k, v in strip_prefix(tensors, "qformer.").items() if k in qformer.state_dict()}
    load_exact(qformer, qformer_state, f"{path} (qformer.*)")
    if "query_tokens" not in tensors:
        raise ValueError(f"{path} has no query_tokens tensor")
    if dtype != "auto":
        vision.to(dtype)
    return vision, qformer, tensors["query_tokens"], config.num_query_tokens


def resolve_preset(args: BuildArguments) -> BuildArguments:
    """`args` with the fields it leaves unset taken from its preset; checks that arch and both parts are known."""
    if args.preset is not None:
        for key, value in load_preset(args.preset).items():
            if key not in BuildArguments.__dataclass_fields__:
                raise ValueError(f"Preset {args.preset!r} has an unknown field {key!r}")
            if getattr(args, key) is None:
                setattr(args, key, value)
    if args.arch not in ARCH_DEFAULTS:
        raise ValueError(f"Unknown or missing --arch {args.arch!r}; choose one of {sorted(ARCH_DEFAULTS)}")
    for name in ("vision_model", "text_model"):
        if getattr(args, name) is None:
            raise ValueError(f"--{name} is required (or a --preset that names it)")
        setattr(args, name, resolve_part(getattr(args, name)))
    return args


def resolve_part(ref: str) -> str:
    """A part's folder or Hub id: `ref` itself, or for `minillava-components:NAME` (`lm`, `clip_vision`, `blip2`) the
    folder of that pretrained tiny part, built on first use (`$MINILLAVA_COMPONENTS_CACHE` or ~/.cache/minillava)."""
    if not ref.startswith(COMPONENT_PREFIX):
        return ref
    from ..demo import components

    builders = {
        "lm": components.tiny_tokenizer_and_lm,
        "clip_vision": components.tiny_clip_vision,
        "blip2": components.tiny_blip2,
    }
    name = ref[len(COMPONENT_PREFIX) :]
    if name not in builders:
        known = ", ".join(COMPONENT_PREFIX + part for part in builders)
        raise ValueError(f"Unknown part {ref!r}; the tiny parts are {known}")
    return str(builders[name]())


def build(args: BuildArguments) -> tuple[MiniVLMForConditionalGeneration, MiniLlavaProcessor]:
    """Composes the model and processor from the pretrained parts named in `args` (or its preset), and saves them."""
    args = resolve_preset(args)
    defaults = ARCH_DEFAULTS[args.arch]
    dtype = parse_dtype(args.dtype)
    torch.manual_seed(args.seed)

    tokenizer = AutoTokenizer.from_pretrained(args.text_model)
    add_image_token(tokenizer)
    language_model = from_pretrained_any_version(AutoModelForCausalLM, args.text_model, dtype)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    common = {"text_config": language_model.config, "image_token_id": image_token_id}

    if args.arch == "llava-1.5":
        vision_tower = from_pretrained_any_version(
            MODEL_MAPPING[type(vision_config_of(args.vision_model))], args.vision_model, dtype
        )
        config = MiniLlavaConfig(
            vision_config=vision_tower.config,
            vision_feature_layer=_pick(args.vision_feature_layer, defaults["vision_feature_layer"]),
            vision_feature_select_strategy=_pick(
                args.vision_feature_select_strategy,
                "full"
                if vision_tower.config.model_type == "siglip_vision_model"
                else defaults["vision_feature_select_strategy"],
            ),
            projector_type=_pick(args.projector_type, defaults["projector_type"]),
            **common,
        )
        with torch.device("meta"):
            model = MiniLlavaForConditionalGeneration(config)
        model.model.vision_tower = vision_tower
        # LLaVA initialises the projector with PyTorch's default Linear initialisation
        model.model.multi_modal_projector = MiniLlavaMultiModalProjector(config).to(vision_tower.dtype)
        recipe, vision_config = "llava-1.5", vision_tower.config
    else:
        vision_tower, qformer, query_tokens, num_query_tokens = load_blip2_front_end(args.vision_model, dtype)
        if args.num_query_tokens not in (None, num_query_tokens):
            raise ValueError(
                f"--num-query-tokens {args.num_query_tokens} differs from the {num_query_tokens} queries of "
                f"{args.vision_model}"
            )
        config = MiniGPT4Config(
            vision_config=vision_tower.config,
            qformer_config=qformer.config,
            num_query_tokens=num_query_tokens,
            **common,
        )
        with torch.device("meta"):
            model = MiniGPT4ForConditionalGeneration(config)
        model.model.vision_tower = vision_tower
        model.model.qformer = qformer.float()
        model.model.query_tokens = torch.nn.Parameter(query_tokens.float())
        # MiniGPT-4's `llama_proj` is a freshly initialised Linear
        model.model.language_projection = torch.nn.Linear(
            config.qformer_config.hidden_size, config.text_config.hidden_size
        ).to(language_model.dtype)
        recipe, vision_config = "minigpt4", vision_tower.config

    model.model.language_model = language_model.get_decoder()
    model.lm_head = language_model.get_output_embeddings()
    model.config.tie_word_embeddings = bool(getattr(language_model.config, "tie_word_embeddings", False))
    model.tie_weights()
    _check_materialised(model)
    fit_tokenizer(model, tokenizer, pad_to_multiple_of=args.pad_to_multiple_of)

    processor = MiniLlavaProcessor(
        image_processor=make_image_processor(recipe, vision_config.image_size, **image_stats(args.vision_model)),
        tokenizer=tokenizer,
        chat_template=resolve_chat_template(_pick(args.chat_template, defaults["chat_template"]), tokenizer),
        image_token=IMAGE_TOKEN,
        num_image_tokens=model.config.image_seq_length,
    )
    model.eval()
    save(model, processor, args.output_dir)
    return model, processor


def fit_tokenizer(model: MiniVLMForConditionalGeneration, tokenizer, pad_to_multiple_of: int | None = None) -> None:
    """Grows the token embeddings to the tokenizer (never shrinks them) and records its special token ids."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
    model.config.text_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def stop_at_turn_end(model: MiniVLMForConditionalGeneration, processor: MiniLlavaProcessor) -> None:
    """Where the chat template closes turns with a separator of its own (MiniGPT-4's `###`), `generate` stops at
    every token that ends with it and the processor drops it from decoded answers."""
    separator = turn_separator(processor.chat_template)
    processor.turn_separator = separator
    if separator is None:
        return
    tokenizer = processor.tokenizer
    stop_ids = sorted(
        token_id
        for token, token_id in tokenizer.get_vocab().items()
        if tokenizer.convert_tokens_to_string([token]).endswith(separator)
    )
    if not stop_ids:
        logger.warning(
            f"No token of the tokenizer ends with the turn separator {separator!r}: generation stops at EOS"
        )
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    model.generation_config.eos_token_id = list(dict.fromkeys(eos + stop_ids))


def save(
    model: MiniVLMForConditionalGeneration, processor: MiniLlavaProcessor, output_dir: str | Path, **save_kwargs
) -> None:
    """Saves model (safetensors), processor and their code so the folder loads with `trust_remote_code=True`;
    `save_kwargs` go to the model's `save_pretrained` (e.g. `max_shard_size`)."""
    if processor.num_image_tokens != model.config.image_seq_length:
        raise ValueError(
            f"The processor expands images to {processor.num_image_tokens} tokens but the model expects "
            f"{model.config.image_seq_length}"
        )
    stop_at_turn_end(model, processor)
    model.save_pretrained(output_dir, **save_kwargs)
    processor.save_pretrained(output_dir)
    logger.info("Saved %s and its processor to %s", type(model).__name__, output_dir)


def _pick(value, default):
    return default if value is None else value


def vision_config_of(path: str):
    config = AutoConfig.from_pretrained(path)
    return getattr(config, "vision_config", config)


def image_stats(path: str) -> dict:
    """Normalisation statistics of the vision checkpoint's own image processor, when it ships one."""
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):
        return {}
    return {"image_mean": list(image_processor.image_mean), "image_std": list(image_processor.image_std)}


def resolve_chat_template(name: str, tokenizer: PreTrainedTokenizerBase) -> str:
    if name == "lm":
        if not tokenizer.chat_template:
            raise ValueError("--chat-template lm: the language model's tokenizer has no chat template")
        return tokenizer.chat_template
    return get_chat_template(name)


def _check_materialised(model: torch.nn.Module) -> None:
    on_meta = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"Parameters left uninitialised while composing the model: {on_meta[:10]}")


def main(argv: list[str] | None = None) -> None:
    """`minillava build`: compose, save, and print where."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(
        BuildArguments, prog="minillava build", description=__doc__
    ).parse_args_into_dataclasses(argv)
    model, _ = build(args)
    print(
        f"Saved {type(model).__name__} ({model.num_parameters():,} parameters) and its processor to {args.output_dir}"
    )


__all__ = [
    "ARCH_DEFAULTS",
    "BuildArguments",
    "IMAGE_TOKEN",
    "add_image_token",
    "build",
    "fit_tokenizer",
    "from_pretrained_any_version",
    "image_stats",
    "load_blip2_front_end",
    "load_preset",
    "main",
    "parse_dtype",
    "resolve_chat_template",
    "resolve_part",
    "resolve_preset",
    "save",
    "vision_config_of",
]
