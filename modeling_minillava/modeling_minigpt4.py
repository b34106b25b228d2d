"""PyTorch MiniGPT-4 model: BLIP-2 vision encoder -> Q-Former with learned queries -> linear -> causal language model."""

import torch
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, Blip2VisionModel, GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_minigpt4 import MiniGPT4Config
from .modeling_base import (
    MiniVLMForConditionalGeneration,
    MiniVLMModel,
    grad_enabled_if_trainable,
    init,
)


class MiniGPT4Model(MiniVLMModel):
    """MiniGPT-4's frozen BLIP-2 front end, its linear projection and the language model (without head)."""

    config_class = MiniGPT4Config
    vision_feature_modules = ("vision_tower", "query_tokens", "qformer")
    # As in MiniGPT-4: the Q-Former and its queries stay in fp32 whatever dtype the language model is loaded in
    # (bf16 included), so they are created in fp32 too.
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _supports_flash_attn = False  # the fp32 Q-Former cannot use Flash Attention

    def __init__(self, config: MiniGPT4Config):
        super().__init__(config)
        self.vision_tower = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(
            torch.randn(1, config.num_query_tokens, config.qformer_config.hidden_size, dtype=torch.float32)
            * config.qformer_config.initializer_range
        )
        self.qformer = Blip2QFormerModel(config.qformer_config).to(torch.float32)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if module is self:
            init.normal_(self.query_tokens, mean=0.0, std=self.config.qformer_config.initializer_range)

    @can_return_tuple
    def get_vision_features(
        self,
        pixel_values: torch.FloatTensor,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The vision tower's outputs, with the Q-Former's query outputs (fp32, before the projection) as
        `pooler_output`: `(num_images, num_query_tokens, qformer_hidden_size)`."""
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config.vision_config, "output_hidden_states", False)
        with grad_enabled_if_trainable(self.vision_tower):
            # last_hidden_state has gone through post_layernorm, which is MiniGPT-4's `ln_vision`
            vision_outputs = self.vision_tower(
                pixel_values.to(self.vision_tower.dtype),
                output_hidden_states=output_hidden_states,
                return_dict=True,
                **({} if output_attentions is None else {"output_attentions": output_attentions}),
            )
        with grad_enabled_if_trainable(self.qformer, self.query_tokens):
            image_embeds = vision_outputs.last_hidden_state.to(self.query_tokens.dtype)
            image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            query_output = self.qformer(
                query_embeds=self.query_tokens.expand(image_embeds.shape[0], -1, -1),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_attention_mask,
                return_dict=True,
            ).last_hidden_state
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=query_output,
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions,
        )

    def project_vision_features(self, vision_features: torch.FloatTensor) -> torch.FloatTensor:
        """The linear projection (`llama_proj`): `(num_images, num_query_tokens, text_hidden_size)`."""
        return self.language_projection(vision_features.to(self.language_projection.weight.dtype))


class MiniGPT4ForConditionalGeneration(MiniVLMForConditionalGeneration, GenerationMixin):
    """MiniGPT-4: a [`MiniGPT4Model`] and a language modeling head."""

    config_class = MiniGPT4Config
    model_class = MiniGPT4Model
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _supports_flash_attn = False


__all__ = ["MiniGPT4ForConditionalGeneration", "MiniGPT4Model"]
