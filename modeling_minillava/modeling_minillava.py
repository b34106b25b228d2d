"""PyTorch MiniLlava (LLaVA-1.5 style) model: vision encoder -> MLP projector -> causal language model."""

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_minillava import MiniLlavaConfig
from .modeling_base import (
    MiniVLMForConditionalGeneration,
    MiniVLMModel,
    grad_enabled_if_trainable,
    image_features_output,
)


class MiniLlavaMultiModalProjector(nn.Module):
    """LLaVA's connector: two linear layers with an activation between them, or a single linear layer (LLaVA-1)."""

    def __init__(self, config: MiniLlavaConfig):
        super().__init__()
        num_feature_layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        vision_hidden_size = config.vision_config.hidden_size * num_feature_layers
        text_hidden_size = config.text_config.hidden_size
        bias = config.multimodal_projector_bias
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size, bias=bias)
        if config.projector_type == "mlp2x_gelu":
            self.act = ACT2FN[config.projector_hidden_act]
            self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size, bias=bias)

    def forward(self, image_features: torch.FloatTensor) -> torch.FloatTensor:
        hidden_states = self.linear_1(image_features)
        if hasattr(self, "linear_2"):
            hidden_states = self.linear_2(self.act(hidden_states))
        return hidden_states


class MiniLlavaModel(MiniVLMModel):
    """The LLaVA-1.5 vision tower, projector and language model (without head)."""

    config_class = MiniLlavaConfig

    def __init__(self, config: MiniLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = MiniLlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The vision tower's outputs, with the selected hidden states projected into `pooler_output`:
        `(num_images, image_seq_length, text_hidden_size)`. `hidden_states` are returned when asked for."""
        layers = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config.vision_config, "output_hidden_states", False)
        with grad_enabled_if_trainable(self.vision_tower):
            vision_outputs = self.vision_tower(
                pixel_values.to(self.vision_tower.dtype),
                output_hidden_states=True,
                return_dict=True,
                **({} if output_attentions is None else {"output_attentions": output_attentions}),
            )
            hidden_states = vision_outputs.hidden_states
            if isinstance(layers, int):
                image_features = hidden_states[layers]
            else:
                image_features = torch.cat([hidden_states[layer] for layer in layers], dim=-1)
            if strategy == "default":
                image_features = image_features[:, 1:]
        image_features = self.multi_modal_projector(
            image_features.to(self.multi_modal_projector.linear_1.weight.dtype)
        )
        return image_features_output(vision_outputs, image_features, output_hidden_states)


class MiniLlavaForConditionalGeneration(MiniVLMForConditionalGeneration, GenerationMixin):
    """LLaVA-1.5: a [`MiniLlavaModel`] and a language modeling head."""

    config_class = MiniLlavaConfig
    model_class = MiniLlavaModel


__all__ = ["MiniLlavaForConditionalGeneration", "MiniLlavaModel", "MiniLlavaMultiModalProjector"]
