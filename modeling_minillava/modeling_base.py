"""Shared PyTorch base of the minillava vision-language models: image-token merge, loss masking, generation."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, ModelOutput


IS_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5

# Published checkpoints (and transformers 4.x) keep these vision towers under a `vision_model.` sub-module, which
# transformers 5 flattens away in memory. Weights are always written with the prefix, so that a folder saved under
# either major version loads with every weight under both.
PUBLISHED_VISION_PREFIX = {"clip_vision_model": "vision_model.", "siglip_vision_model": "vision_model."}
VISION_TOWER_KEY = "model.vision_tower."


@dataclass
class MiniVLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor`, *optional*):
        Projected image features of shape `(num_images, image_seq_length, text_hidden_size)`.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class MiniVLMCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*):
        Next-token prediction loss, ignoring image positions and labels set to -100.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Language modeling head scores.
    image_hidden_states (`torch.FloatTensor`, *optional*):
        Projected image features of shape `(num_images, image_seq_length, text_hidden_size)`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None
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
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False


class MiniVLMModel(MiniVLMPreTrainedModel):
    """
    A vision tower, a connector and a language model without head. Subclasses build `vision_tower`, the connector
    and `language_model`, and implement `get_image_features(pixel_values)`, which returns features of shape
    `(num_images, image_seq_length, text_hidden_size)`.
    """

    def __init__(self, config):
        super().__init__(config)
        self._register_load_state_dict_pre_hook(self._map_vision_prefix_on_load)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, image_features
    ):
        """Positions of the image tokens, checked against the number of image features."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embed).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id
        n_image_tokens = int(special_image_mask.sum())
        n_images, tokens_per_image = image_features.shape[:2]
        if n_image_tokens != n_images * tokens_per_image:
            raise ValueError(
                f"Image features and image tokens do not match: the text has {n_image_tokens} image tokens but "
                f"{n_images} image(s) give {n_images * tokens_per_image} features ({tokens_per_image} per image). "
                "Each image placeholder must be expanded to exactly that many image tokens (use the model's "
                "processor); the usual causes are truncation (`max_length` cut into the image tokens), or a missing "
                "or extra image placeholder compared with the images given."
            )
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        **kwargs,
    ) -> MiniVLMModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None:
            image_features = self.get_image_features(pixel_values)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)
        elif input_ids is not None and (past_key_values is None or past_key_values.get_seq_length() == 0):
            if (input_ids == self.config.image_token_id).any():
                raise ValueError(
                    "The text contains image tokens but no `pixel_values` were given: pass the images with the text "
                    "(processor(images=..., text=...))."
                )

        kwargs.setdefault("return_dict", True)
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return MiniVLMModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )

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
    if IS_TRANSFORMERS_V5:
        _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config):
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

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

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        return self.model.get_image_features(pixel_values)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> MiniVLMCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the language modeling loss; -100 is ignored, and so are image-token positions.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
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
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, pixel_values=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, past_key_values=past_key_values, **kwargs)
        # Images are encoded once, in the prefill step; later steps read them from the KV cache.
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        if prefill or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
        return model_inputs

    def _published_vision_prefix(self) -> str | None:
        """The vision key prefix to add on save / on load, or None when memory and disk already agree."""
        published = PUBLISHED_VISION_PREFIX.get(self.config.vision_config.model_type)
        if published is None or hasattr(self.model.vision_tower, published.rstrip(".")):
            return None
        return published

    def hub_auto_map(self) -> dict[str, str]:
        """The `auto_map` written to `config.json`: every Auto class this model loads with."""
        model = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        base = f"{self.model_class.__module__.rsplit('.', 1)[-1]}.{self.model_class.__name__}"
        config = f"{type(self.config).__module__.rsplit('.', 1)[-1]}.{type(self.config).__name__}"
        return {
            "AutoConfig": config,
            "AutoModel": base,
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
    "MiniVLMCausalLMOutputWithPast",
    "MiniVLMForConditionalGeneration",
    "MiniVLMModel",
    "MiniVLMModelOutputWithPast",
    "MiniVLMPreTrainedModel",
    "grad_enabled_if_trainable",
]
