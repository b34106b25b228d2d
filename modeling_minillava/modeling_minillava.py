"""PyTorch MiniLlava (LLaVA-1.5 style) model: vision encoder -> MLP projector -> causal language model."""

from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple

from .configuration_minillava import MiniLlavaConfig
from .modeling_base import MiniVLMForConditionalGeneration, MiniVLMModel, grad_enabled_if_trainable


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


# Vision towers whose `last_hidden_state` is the output of their last encoder layer (no final norm applied to it), so
# a single feature layer is read from there without keeping every hidden state.
LAST_HIDDEN_STATE_IS_ENCODER_OUTPUT = ("clip_vision_model",)


class VisionEncoderLayers(nn.ModuleList):
    """A vision encoder's layers. Inside `run_first(num_layers)`, iterating them yields the first `num_layers` only,
    so the encoder stops after the last layer whose output is used (LLaVA-1.5's feature layer -2 leaves the last
    layer of CLIP out); called on its own, the tower runs every layer, as published."""

    num_layers_to_run: int | None = None

    def __iter__(self):
        layers = list(self._modules.values())
        return iter(layers if self.num_layers_to_run is None else layers[: self.num_layers_to_run])

    @contextmanager
    def run_first(self, num_layers: int):
        previous, self.num_layers_to_run = self.num_layers_to_run, num_layers
        try:
            yield
        finally:
            self.num_layers_to_run = previous


def absolute_feature_layers(layers: int | list[int], num_hidden_layers: int) -> list[int]:
    """Feature layers as indices into the tower's `hidden_states` (embeddings at 0, layer `i`'s output at `i + 1`)."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    return [layer if layer >= 0 else num_hidden_layers + 1 + layer for layer in layers]


class MiniLlavaModel(MiniVLMModel):
    """The LLaVA-1.5 vision tower, projector and language model (without head)."""

    config_class = MiniLlavaConfig
    vision_feature_modules = ("vision_tower",)

    def __init__(self, config: MiniLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = MiniLlavaMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self._limit_vision_layers()
        self.post_init()

    def _limit_vision_layers(self) -> None:
        """Makes the tower's encoder layers a [`VisionEncoderLayers`] when the feature layers leave some unused."""
        num_layers = getattr(self.config.vision_config, "num_hidden_layers", None)
        needed = max(*absolute_feature_layers(self.config.vision_feature_layer, num_layers or 0), 1)
        if num_layers is None or needed >= num_layers:
            return
        for module in self.vision_tower.modules():
            layers = getattr(module, "layers", None)
            if type(layers) is nn.ModuleList and len(layers) == num_layers:
                module.layers = VisionEncoderLayers(layers)
                return

    def _vision_encoder_layers(self) -> VisionEncoderLayers | None:
        return next((m for m in self.vision_tower.modules() if isinstance(m, VisionEncoderLayers)), None)

    @can_return_tuple
    def get_vision_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        whole_tower: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """The selected hidden state(s) of the vision tower, before the projector, as `pooler_output`:
        `(num_images, image_seq_length, vision_hidden_size * num_feature_layers)`.

        The tower runs up to the last layer selected and no further (its `last_hidden_state` is then the last state
        it computed), unless `whole_tower` or its hidden states or attentions are asked for; every hidden state is
        kept only when asked for or needed (several feature layers, or a tower that normalises its last state)."""
        layers = self.config.vision_feature_layer if vision_feature_layer is None else vision_feature_layer
        strategy = vision_feature_select_strategy or self.config.vision_feature_select_strategy
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config.vision_config, "output_hidden_states", False)
        if output_attentions is None and getattr(self.config.vision_config, "output_attentions", False):
            output_attentions = True
        num_layers = self.config.vision_config.num_hidden_layers
        indices = absolute_feature_layers(layers, num_layers)
        # the whole tower when its per-layer outputs are asked for; otherwise at least one layer (with none,
        # transformers 5 records no hidden state at all, not even the embeddings)
        whole_tower = whole_tower or output_hidden_states or output_attentions
        encoder_layers = None if whole_tower else self._vision_encoder_layers()
        run = max(*indices, 1) if encoder_layers is not None else num_layers
        from_last_state = (
            len(indices) == 1
            and indices[0] == run
            and self.config.vision_config.model_type in LAST_HIDDEN_STATE_IS_ENCODER_OUTPUT
        )
        with (
            grad_enabled_if_trainable(self.vision_tower),
            encoder_layers.run_first(run) if encoder_layers is not None else nullcontext(),
        ):
            vision_outputs = self.vision_tower(
                pixel_values.to(self.vision_tower.dtype),
                output_hidden_states=output_hidden_states or not from_last_state,
                return_dict=True,
                **({} if output_attentions is None else {"output_attentions": output_attentions}),
            )
            if from_last_state:
                features = vision_outputs.last_hidden_state
            else:
                features = torch.cat([vision_outputs.hidden_states[index] for index in indices], dim=-1)
            if strategy == "default":
                features = features[:, 1:]
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=features,
            hidden_states=vision_outputs.hidden_states if output_hidden_states else None,
            attentions=vision_outputs.attentions,
        )

    def project_vision_features(self, vision_features: torch.FloatTensor) -> torch.FloatTensor:
        """The projector: `(num_images, image_seq_length, text_hidden_size)` image features."""
        return self.multi_modal_projector(vision_features.to(self.multi_modal_projector.linear_1.weight.dtype))


class MiniLlavaForConditionalGeneration(MiniVLMForConditionalGeneration, GenerationMixin):
    """LLaVA-1.5: a [`MiniLlavaModel`] and a language modeling head."""

    config_class = MiniLlavaConfig
    model_class = MiniLlavaModel


__all__ = [
    "MiniLlavaForConditionalGeneration",
    "MiniLlavaModel",
    "MiniLlavaMultiModalProjector",
    "VisionEncoderLayers",
    "absolute_feature_layers",
]
