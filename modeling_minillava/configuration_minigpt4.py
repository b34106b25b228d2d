"""MiniGPT-4 model configuration."""

from transformers import AutoConfig, Blip2QFormerConfig, Blip2VisionConfig, PretrainedConfig


class MiniGPT4Config(PretrainedConfig):
    r"""
    Configuration of a [`MiniGPT4ForConditionalGeneration`]: BLIP-2's vision encoder and Q-Former with learned query
    tokens, one linear projection, and a causal language model, as in MiniGPT-4.

    Args:
        vision_config (`dict` or `Blip2VisionConfig`, *optional*):
            Config of the BLIP-2 vision encoder (EVA ViT-g/14 at 224 px by default); its `post_layernorm` is
            MiniGPT-4's `ln_vision`.
        qformer_config (`dict` or `Blip2QFormerConfig`, *optional*):
            Config of the Q-Former. Its `encoder_hidden_size` is set to the vision hidden size.
        text_config (`dict` or `PretrainedConfig`, *optional*):
            Config of the causal language model. Defaults to a Llama-7B shaped config (Vicuna-7B).
        num_query_tokens (`int`, *optional*, defaults to 32):
            Number of learned queries, which is also the number of image tokens per image.
        image_token_id (`int`, *optional*, defaults to 32000):
            Id of the image placeholder token.
    """

    model_type = "minillava_minigpt4"
    _auto_class = "AutoConfig"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs = {"vision_config": Blip2VisionConfig, "qformer_config": Blip2QFormerConfig, "text_config": AutoConfig}

    def __init__(
        self,
        vision_config: dict | Blip2VisionConfig | None = None,
        qformer_config: dict | Blip2QFormerConfig | None = None,
        text_config: dict | PretrainedConfig | None = None,
        num_query_tokens: int = 32,
        image_token_id: int = 32000,
        **kwargs,
    ):
        if isinstance(vision_config, dict):
            vision_config = Blip2VisionConfig(**{k: v for k, v in vision_config.items() if k != "model_type"})
        elif vision_config is None:
            vision_config = Blip2VisionConfig()
        if isinstance(qformer_config, dict):
            qformer_config = Blip2QFormerConfig(**{k: v for k, v in qformer_config.items() if k != "model_type"})
        elif qformer_config is None:
            qformer_config = Blip2QFormerConfig()
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        elif text_config is None:
            text_config = AutoConfig.for_model("llama")
        qformer_config.encoder_hidden_size = vision_config.hidden_size

        self.vision_config = vision_config
        self.qformer_config = qformer_config
        self.text_config = text_config
        self.num_query_tokens = num_query_tokens
        self.image_token_id = image_token_id
        self.image_seq_length = num_query_tokens
        kwargs.setdefault("tie_word_embeddings", getattr(text_config, "tie_word_embeddings", False))
        super().__init__(**kwargs)


__all__ = ["MiniGPT4Config"]
