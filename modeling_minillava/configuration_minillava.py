"""MiniLlava (LLaVA-1.5 style) model configuration."""

from transformers import AutoConfig, PretrainedConfig


class MiniLlavaConfig(PretrainedConfig):
    r"""
    Configuration of a [`MiniLlavaForConditionalGeneration`]: a vision encoder, a projector and a causal language model,
    as in LLaVA-1.5.

    Args:
        vision_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the vision encoder (any HF vision model returning hidden states: CLIP, SigLIP, ...).
            Defaults to CLIP ViT-L/14 at 336 px.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the causal language model (Llama, Qwen2, ...). Defaults to a Llama-7B shaped config.
        image_token_id (`int`, *optional*, defaults to 32000):
            Id of the image placeholder token; each image fills `image_seq_length` such tokens.
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            `"mlp2x_gelu"` (LLaVA-1.5: linear, activation, linear) or `"linear"` (LLaVA-1).
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the two projector layers.
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector layers have a bias.
        vision_feature_layer (`int` or `list[int]`, *optional*, defaults to -2):
            Hidden-state index (or indices, concatenated) of the vision encoder fed to the projector.
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the CLS token, `"full"` keeps every token.
        image_seq_length (`int`, *optional*):
            Number of image tokens per image; derived from the vision config when not given.
    """

    model_type = "minillava"
    _auto_class = "AutoConfig"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs = {"vision_config": AutoConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | PretrainedConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        image_token_id: int = 32000,
        projector_type: str = "mlp2x_gelu",
        projector_hidden_act: str = "gelu",
        multimodal_projector_bias: bool = True,
        vision_feature_layer: int | list[int] = -2,
        vision_feature_select_strategy: str = "default",
        image_seq_length: int | None = None,
        **kwargs,
    ):
        if projector_type not in ("mlp2x_gelu", "linear"):
            raise ValueError(f"projector_type must be 'mlp2x_gelu' or 'linear', got {projector_type!r}")
        if vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {vision_feature_select_strategy!r}"
            )
        if isinstance(vision_config, dict):
            vision_config = dict(vision_config)
            vision_config = AutoConfig.for_model(vision_config.pop("model_type", "clip_vision_model"), **vision_config)
        elif vision_config is None:
            vision_config = AutoConfig.for_model(
                "clip_vision_model",
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
                projection_dim=768,
            )
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        elif text_config is None:
            text_config = AutoConfig.for_model("llama")

        self.vision_config = vision_config
        self.text_config = text_config
        self.image_token_id = image_token_id
        self.projector_type = projector_type
        self.projector_hidden_act = projector_hidden_act
        self.multimodal_projector_bias = multimodal_projector_bias
        self.vision_feature_layer = vision_feature_layer
        self.vision_feature_select_strategy = vision_feature_select_strategy
        if image_seq_length is None:
            num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
            has_cls = vision_config.model_type != "siglip_vision_model"
            image_seq_length = num_patches + int(has_cls and vision_feature_select_strategy == "full")
        self.image_seq_length = image_seq_length
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)


__all__ = ["MiniLlavaConfig"]
