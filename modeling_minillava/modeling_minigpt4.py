"""PyTorch MiniGPT-4 model: BLIP-2 vision encoder -> Q-Former with learned queries -> linear -> causal language model."""

import torch
from torch import nn
from transformers import AutoModel, Blip2QFormerModel, Blip2VisionModel

from .configuration_minigpt4 import MiniGPT4Config
from .modeling_base import MiniVLMForConditionalGeneration, MiniVLMModel, grad_enabled_if_trainable


class MiniGPT4Model(MiniVLMModel):
    """MiniGPT-4's frozen BLIP-2 front end, its linear projection and the language model (without head)."""

    config_class = MiniGPT4Config
    # As in BLIP-2: the Q-Former and its queries stay in fp32 whatever dtype the language model is loaded in.
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _supports_flash_attn = False  # the fp32 Q-Former cannot use Flash Attention

    def __init__(self, config: MiniGPT4Config):
        super().__init__(config)
        self.vision_tower = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(
            torch.randn(1, config.num_query_tokens, config.qformer_config.hidden_size)
            * config.qformer_config.initializer_range
        )
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Q-Former query outputs, projected: `(num_images, num_query_tokens, text_hidden_size)`."""
        with grad_enabled_if_trainable(self.vision_tower):
            # last_hidden_state has gone through post_layernorm, which is MiniGPT-4's `ln_vision`
            image_embeds = self.vision_tower(pixel_values.to(self.vision_tower.dtype), return_dict=True)
            image_embeds = image_embeds.last_hidden_state
        with grad_enabled_if_trainable(self.qformer, self.query_tokens):
            image_embeds = image_embeds.to(self.query_tokens.dtype)
            image_attention_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            query_output = self.qformer(
                query_embeds=self.query_tokens.expand(image_embeds.shape[0], -1, -1),
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_attention_mask,
                return_dict=True,
            ).last_hidden_state
        return self.language_projection(query_output.to(self.language_projection.weight.dtype))


class MiniGPT4ForConditionalGeneration(MiniVLMForConditionalGeneration):
    """MiniGPT-4: a [`MiniGPT4Model`] and a language modeling head."""

    config_class = MiniGPT4Config
    model_class = MiniGPT4Model
    _keep_in_fp32_modules = ["query_tokens", "qformer"]
    _keep_in_fp32_modules_strict = ["query_tokens", "qformer"]
    _supports_flash_attn = False


__all__ = ["MiniGPT4ForConditionalGeneration", "MiniGPT4Model"]
