"""Shared PyTorch base of the minillava vision-language models: image-token merge, loss masking, generation."""

import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, modeling_outputs
from transformers.generation import utils as generation_utils
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llama.modeling_llama import LlamaForCausalLM
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple


# ---------------------------------------------------------------------------------------------------------------------
# The few places where the supported transformers releases (4.57.x to the newest 5.x) differ. Everything else uses
# transformers' own output classes, kwargs, cache and loss; each name here picks the installed release's way, read
# from transformers itself (a field, a mapping, a class attribute) rather than from its version number. (They live in
# this file rather than in one of their own: transformers 4.57 copies only the direct relative imports of a local
# folder's code files into its module cache.)
# ---------------------------------------------------------------------------------------------------------------------

try:  # transformers >= 5.0: init functions that leave weights loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # 4.57: weights loaded from a checkpoint are never re-initialised there
    from torch.nn import init

try:  # transformers >= 5.0
    from transformers.utils import torch_compilable_check
except ImportError:

    def torch_compilable_check(cond, msg, error_type: type[Exception] = ValueError) -> None:
        """Raises `error_type(msg)` when `cond` is false, in a way `torch.compile` can trace (as 5.x's helper)."""
        message = msg if callable(msg) else (lambda: msg)
        if isinstance(cond, torch.Tensor):
            torch._check_tensor_all_with(error_type, cond, message)
        else:
            torch._check_with(error_type, cond, message)


# The KV cache's name in forward kwargs and outputs: `cache` from transformers 5.24, `past_key_values` before.
CACHE_NAME = "cache" if "cache" in modeling_outputs.CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The output classes to extend: the multimodal ones (with `image_outputs`) where transformers has them (5.24+).
BaseModelOutputWithPast = getattr(
    modeling_outputs, "MultimodalBaseModelOutputWithPast", modeling_outputs.BaseModelOutputWithPast
)
CausalLMOutputWithPast = getattr(
    modeling_outputs, "MultimodalCausalLMOutputWithPast", modeling_outputs.CausalLMOutputWithPast
)
HAS_IMAGE_OUTPUTS = "image_outputs" in CausalLMOutputWithPast.__dataclass_fields__

# Whether `generate` itself passes `pixel_values` to the first step only (newer 5.x); before that, each model's
# `prepare_inputs_for_generation` drops them once the images are in the cache.
GENERATE_DROPS_PIXELS_AFTER_PREFILL = "pixel_values" in getattr(
    generation_utils, "MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL", ()
)

# The language-model head's parallel plans and tied-weights declaration, as transformers' own Llama declares them in
# the installed release (tensor-parallel style names and the tied-keys format changed in 5.x).
LM_HEAD_TP_PLAN = dict(LlamaForCausalLM._tp_plan or {})
LM_HEAD_PP_PLAN = dict(getattr(LlamaForCausalLM, "_pp_plan", None) or {})
TIED_WEIGHTS_KEYS_ARE_A_MAPPING = isinstance(LlamaForCausalLM._tied_weights_keys, dict)


def is_distributed() -> bool:
    """Whether this process is one of several in a `torch.distributed` group."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def is_first_generation_step(generation_kwargs: dict) -> bool:
    """Whether `prepare_inputs_for_generation` prepares the step that reads the prompt (and so its images)."""
    if "is_first_iteration" in generation_kwargs:  # 5.x
        return bool(generation_kwargs["is_first_iteration"])
    cache_position = generation_kwargs.get("cache_position")  # 4.57
    return cache_position is None or int(cache_position[0]) == 0


# ---------------------------------------------------------------------------------------------------------------------
# Default LoRA targets. PEFT picks the targets of a `LoraConfig` without `target_modules` (what `trl sft --use_peft`
# builds) by `config.model_type`, from its own table (`LoraModel._prepare_adapter_config` reads
# `peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`), which has no entry for these model types;
# and `all-linear` adapts the vision tower and the connector too (PEFT leaves out only the output layer). So each model
# enters its type there, with a regex (a `str` value, full-matched against module paths: PEFT >= 0.21) over the
# language model's linear layers, as LLaVA-1.5's LoRA recipe targets them (Llama/Vicuna, Mistral, Qwen2, Gemma and
# Phi-3 names): never the vision tower, the connector, the Q-Former or `lm_head`. The model files do not import peft:
# the entry is made when a model is built in a process that has imported it (as TRL does before loading the model).
# ---------------------------------------------------------------------------------------------------------------------

LORA_TARGET_MODULES = (
    r"(model\.)?language_model\..*\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|gate_proj|up_proj|down_proj|gate_up_proj)"
)
PEFT_REGEX_DEFAULTS_SINCE = (0, 21)


def register_peft_lora_targets(model_type: str) -> bool:
    """Enters `model_type` in PEFT's default LoRA targets (an entry already there is kept) if peft is imported and
    takes a regex there. Returns whether `model_type` has an entry."""
    peft, constants = sys.modules.get("peft"), sys.modules.get("peft.utils.constants")
    mapping = getattr(constants, "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING", None)
    if peft is None or not isinstance(mapping, dict):
        return False
    try:
        version = tuple(int(part) for part in peft.__version__.split(".")[:2])
    except (AttributeError, ValueError):
        return False
    if version < PEFT_REGEX_DEFAULTS_SINCE:
        return False
    mapping.setdefault(model_type, LORA_TARGET_MODULES)
    return True


# ---------------------------------------------------------------------------------------------------------------------

# Published checkpoints (and transformers 4.x) keep these vision towers under a `vision_model.` sub-module, which
# transformers 5 flattens away in memory. Weights are always written with the prefix, so that a folder saved under
# either major version loads with every weight under both.
PUBLISHED_VISION_PREFIX = {"clip_vision_model": "vision_model.", "siglip_vision_model": "vision_model."}
VISION_TOWER_KEY = "model.vision_tower."


@dataclass
class MiniVLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    The language model's outputs (transformers' own class: the cache is `cache` from 5.24, `past_key_values` before),
    plus, where transformers has it, `image_outputs` (the [`BaseModelOutputWithPooling`] of `get_image_features`).

    image_hidden_states (`torch.FloatTensor`, *optional*):
        Projected image features of shape `(num_images, image_seq_length, text_hidden_size)`.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class MiniVLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    transformers' causal LM output (`loss` ignores image positions and labels set to -100), plus:

    image_hidden_states (`torch.FloatTensor`, *optional*):
        Projected image features of shape `(num_images, image_seq_length, text_hidden_size)`.
    """

    image_hidden_states: torch.FloatTensor | None = None


def grad_enabled_if_trainable(*modules: nn.Module | nn.Parameter):
    """A context that disables autograd when none of `modules` has a trainable parameter (no activations kept)."""
    for module in modules:
        params = [module] if isinstance(module, nn.Parameter) else module.parameters()
        if any(p.requires_grad for p in params):
            return nullcontext()
    return torch.no_grad()


class MiniVLMPreTrainedModel(PreTrainedModel):
    """Capability flags shared by the minillava models."""

    base_model_prefix = "model"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = [CACHE_NAME]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True


class MiniVLMModel(MiniVLMPreTrainedModel):
    """
    A vision tower, a connector and a language model without head. Subclasses build `vision_tower`, the connector
    and `language_model`, and split the image path in two:

    - `get_vision_features(pixel_values, ...)`: the vision front end up to the part that trains in every stage
      (LLaVA: the tower's selected hidden states; MiniGPT-4: the Q-Former's outputs), as the `pooler_output` of a
      [`BaseModelOutputWithPooling`]; the modules it runs are named in `vision_feature_modules`;
    - `project_vision_features(vision_features)`: the rest of the connector, to `(num_images, image_seq_length,
      text_hidden_size)`.

    `forward` takes either `pixel_values` or those `vision_features` (e.g. read from a feature cache while the front
    end is frozen).
    """

    vision_feature_modules: tuple[str, ...] = ("vision_tower",)

    def __init__(self, config):
        super().__init__(config)
        self._register_load_state_dict_pre_hook(self._map_vision_prefix_on_load)
        register_peft_lora_targets(config.model_type)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def train(self, mode: bool = True):
        """Sets training mode, except for the front-end modules (`vision_feature_modules`) that have no trainable
        parameter: a frozen tower (and Q-Former) stays in eval mode, without dropout, as MiniGPT-4 keeps its ViT and
        Q-Former (`disabled_train`) whichever trainer calls `train()`."""
        super().train(mode)
        if mode:
            for name in self.vision_feature_modules:
                module = getattr(self, name, None)
                if isinstance(module, nn.Module) and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """The vision outputs of `get_vision_features`, with the connector's image features as `pooler_output`:
        `(num_images, image_seq_length, text_hidden_size)`, as transformers 5's VLMs return them (the whole vision
        tower runs; `forward` runs only the layers the features need)."""
        vision_outputs = self.get_vision_features(pixel_values, return_dict=True, whole_tower=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=self.project_vision_features(vision_outputs.pooler_output),
            hidden_states=vision_outputs.hidden_states,
            attentions=vision_outputs.attentions,
        )

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, image_features: torch.FloatTensor
    ) -> torch.BoolTensor:
        """Positions of the image tokens (broadcast over the hidden size), checked against the number of features."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.full((), self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embed).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = special_image_mask.sum()
        n_images, tokens_per_image = image_features.shape[:2]
        if torch.compiler.is_compiling():  # a traceable check; the counts cannot be read out while tracing
            torch_compilable_check(
                n_image_tokens == n_images * tokens_per_image, "Image features and image tokens do not match"
            )
        elif int(n_image_tokens) != n_images * tokens_per_image:
            raise ValueError(
                f"Image features and image tokens do not match: the text has {int(n_image_tokens)} image tokens but "
                f"{n_images} image(s) give {n_images * tokens_per_image} features ({tokens_per_image} per image). "
                "Each image placeholder must be expanded to exactly that many image tokens (use the model's "
                "processor); the usual causes are truncation (`max_length` cut into the image tokens), or a missing "
                "or extra image placeholder compared with the images given."
            )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_features: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MiniVLMModelOutputWithPast:
        r"""
        vision_features (`torch.FloatTensor`, *optional*):
            The images as `get_vision_features` gives them (its `pooler_output`), in place of `pixel_values`: only
            the rest of the connector runs on them.

        Runs the language model on the text embeddings with each image's features in place of its image tokens.
        The KV cache and every other language-model argument (`use_cache`, `output_attentions`, ...) pass through
        `kwargs` under the installed transformers' names (the cache is `cache` from 5.24, `past_key_values` before).
        Image tokens without `pixel_values` are embedded as text, as in transformers' LLaVA.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_outputs = None
        if pixel_values is not None and vision_features is not None:
            raise ValueError("Pass the images either as `pixel_values` or as `vision_features`, not both.")
        if pixel_values is not None:  # only the tower layers the features need run, unlike `get_image_features`
            image_outputs = self.get_vision_features(pixel_values, return_dict=True)
            vision_features = image_outputs.pooler_output
        if vision_features is not None:
            projected = self.project_vision_features(vision_features)
            image_outputs = BaseModelOutputWithPooling(**{**(image_outputs or {}), "pooler_output": projected})
            image_features = image_outputs.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
        elif self.training and is_distributed():
            inputs_embeds = inputs_embeds + self.image_path_on_text_only_batch(inputs_embeds)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        image_fields = {}
        if image_outputs is not None:
            image_fields["image_hidden_states"] = image_outputs.pooler_output
            if HAS_IMAGE_OUTPUTS:
                image_fields["image_outputs"] = image_outputs
        return MiniVLMModelOutputWithPast(**outputs, **image_fields)

    def image_path_on_text_only_batch(self, inputs_embeds: torch.FloatTensor) -> torch.FloatTensor:
        """A scalar zero computed through the vision tower and the connector from a blank image.

        In distributed training a rank whose batch has no image must still run the image path: ZeRO-3 and FSDP
        gather the tower's and the connector's parameters inside their forward (collectives every rank must join),
        and DDP expects a gradient for every trainable parameter. Adding this zero leaves the outputs unchanged.
        """
        vision_config = self.config.vision_config
        dtype = next(self.vision_tower.parameters()).dtype
        size = vision_config.image_size
        blank = torch.zeros(
            1, getattr(vision_config, "num_channels", 3), size, size, dtype=dtype, device=inputs_embeds.device
        )
        features = self.project_vision_features(self.get_vision_features(blank, return_dict=True).pooler_output)
        return 0.0 * features.sum().to(inputs_embeds.dtype)

    def _map_vision_prefix_on_load(self, state_dict: dict, prefix: str, *args, **kwargs):
        """`load_state_dict` of a checkpoint in the published key layout (e.g. a Trainer checkpoint on resume)."""
        published = PUBLISHED_VISION_PREFIX.get(self.config.vision_config.model_type)
        if published is None or hasattr(self.vision_tower, published.rstrip(".")):
            return
        tower = f"{prefix}vision_tower."
        for key in [k for k in state_dict if k.startswith(tower + published)]:
            state_dict[tower + key[len(tower + published) :]] = state_dict.pop(key)


class MiniVLMForConditionalGeneration(MiniVLMPreTrainedModel, GenerationMixin):
    """A [`MiniVLMModel`] with a language modeling head; subclasses set `model_class`."""

    model_class: type[MiniVLMModel]
    # Saving copies the code files and writes `auto_map`, so the folder loads with `trust_remote_code=True`.
    _auto_class = "AutoModelForImageTextToText"
    if TIED_WEIGHTS_KEYS_ARE_A_MAPPING:
        _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]
    _tp_plan = LM_HEAD_TP_PLAN
    _pp_plan = LM_HEAD_PP_PLAN

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        # The image placeholder is never a token to generate (nor to propose, in prompt-lookup decoding).
        self.generation_config.suppress_tokens = [config.image_token_id]

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """The vision outputs with the connector's features as `pooler_output` (see the base model's method)."""
        return self.model.get_image_features(pixel_values, **kwargs)

    def get_vision_features(self, pixel_values: torch.FloatTensor, **kwargs) -> BaseModelOutputWithPooling:
        """The frozen-path features (`pooler_output`) that `forward` also takes as `vision_features`."""
        return self.model.get_vision_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        vision_features: torch.FloatTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> MiniVLMCausalLMOutputWithPast:
        r"""
        vision_features (`torch.FloatTensor`, *optional*):
            The images as `get_vision_features` gives them, in place of `pixel_values` (see [`MiniVLMModel.forward`]).
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the language modeling loss; -100 is ignored, and so are image-token positions. A sample whose
            text holds image tokens must come with its images: a loss over image tokens embedded as text would train
            on a lost image, so that raises.

        The KV cache and the other language-model arguments pass through `kwargs`, as in [`MiniVLMModel.forward`].
        """
        no_images = pixel_values is None and vision_features is None
        if labels is not None and no_images and input_ids is not None and not torch.compiler.is_compiling():
            if (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "The text contains image tokens but no `pixel_values` were given: pass the images with the text "
                    "(processor(images=..., text=...))."
                )
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            vision_features=vision_features,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.image_token_id, -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return MiniVLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **{name: value for name, value in outputs.items() if name != "last_hidden_state"},
        )

    if not GENERATE_DROPS_PIXELS_AFTER_PREFILL:

        def prepare_inputs_for_generation(
            self,
            input_ids: torch.LongTensor,
            past_key_values=None,
            inputs_embeds: torch.FloatTensor | None = None,
            pixel_values: torch.FloatTensor | None = None,
            **kwargs,
        ):
            """Passes `pixel_values` to the step that reads the prompt only; later steps find the images in the
            cache. (Newer transformers do this in `GenerationMixin` itself; these releases name the cache
            `past_key_values`, and `generate` checks its arguments against this signature.)"""
            model_inputs = super().prepare_inputs_for_generation(
                input_ids, past_key_values=past_key_values, inputs_embeds=inputs_embeds, **kwargs
            )
            if is_first_generation_step(kwargs) or not kwargs.get("use_cache", True):
                model_inputs["pixel_values"] = pixel_values
            return model_inputs

    def _published_vision_prefix(self) -> str | None:
        """The vision key prefix to add on save / on load, or None when memory and disk already agree."""
        published = PUBLISHED_VISION_PREFIX.get(self.config.vision_config.model_type)
        if published is None or hasattr(self.model.vision_tower, published.rstrip(".")):
            return None
        return published

    def hub_auto_map(self) -> dict[str, str]:
        """The `auto_map` written to `config.json`: every Auto class this model loads with. `AutoModel` names this
        generating class too, as remote-code VLMs do and as generic loaders expect (lmms-eval's `huggingface`
        model loads a remote-code folder through `AutoModel` and calls `generate`); the headless base model is its
        `.model`, and what `AutoModel` gives where minillava is installed and remote code is not asked for."""
        model = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        config = f"{type(self.config).__module__.rsplit('.', 1)[-1]}.{type(self.config).__name__}"
        return {
            "AutoConfig": config,
            "AutoModel": model,
            "AutoModelForImageTextToText": model,
            "AutoModelForVision2Seq": model,
            "AutoProcessor": "processing_minillava.MiniLlavaProcessor",
        }

    def save_pretrained(self, save_directory, *args, state_dict: dict | None = None, **kwargs):
        """Saves safetensors weights in the published vision key layout, `auto_map` and the code files."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **self.hub_auto_map()}
        published = self._published_vision_prefix()
        if published is not None:
            state_dict = self.state_dict() if state_dict is None else state_dict
            state_dict = {
                (VISION_TOWER_KEY + published + key[len(VISION_TOWER_KEY) :])
                if key.startswith(VISION_TOWER_KEY) and not key.startswith(VISION_TOWER_KEY + published)
                else key: value
                for key, value in state_dict.items()
            }
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    def _fix_state_dict_key_on_load(self, key: str) -> tuple[str, bool]:
        """transformers 4.x: accepts vision keys saved without their published prefix (transformers 5 folders)."""
        key, changed = super()._fix_state_dict_key_on_load(key)
        tower = getattr(self.model, "vision_tower", None)
        for published in set(PUBLISHED_VISION_PREFIX.values()):
            if (
                key.startswith(VISION_TOWER_KEY)
                and hasattr(tower, published.rstrip("."))
                and not key.startswith(VISION_TOWER_KEY + published)
            ):
                return VISION_TOWER_KEY + published + key[len(VISION_TOWER_KEY) :], True
        return key, changed


__all__ = [
    "LORA_TARGET_MODULES",
    "MiniVLMCausalLMOutputWithPast",
    "MiniVLMForConditionalGeneration",
    "MiniVLMModel",
    "MiniVLMModelOutputWithPast",
    "MiniVLMPreTrainedModel",
    "grad_enabled_if_trainable",
    "init",
]
