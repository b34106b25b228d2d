"""Tiny, offline building blocks for tests: a byte-level BPE tokenizer, random sub-models and images."""

from __future__ import annotations

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


CORPUS = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: What is in the image? ASSISTANT: A red circle on a blue background.",
    "###Human: <Img></Img> Describe this image in detail. ###Assistant: A small green square.",
    "Answer the question using a single word or phrase. yes no one two three left right top bottom",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]

# llava-hf/llava-1.5-7b-hf's chat template: "USER: <image>\n{text} ASSISTANT:", images first in their turn.
LLAVA_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def make_tokenizer(image_tokens: tuple[str, ...] = ("<image>",), vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A Llama-like byte-level BPE tokenizer trained in memory (no download), with the image token(s) added."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    if image_tokens:
        fast.add_special_tokens({"additional_special_tokens": list(image_tokens)})
    return fast


def clip_vision_config(image_size: int = 16, patch_size: int = 4, hidden_size: int = 32, layers: int = 2):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        projection_dim=16,
    )


def siglip_vision_config(image_size: int = 16, patch_size: int = 4, hidden_size: int = 32, layers: int = 2):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
    )


def blip2_vision_config(image_size: int = 16, patch_size: int = 4, hidden_size: int = 32, layers: int = 2):
    from transformers import Blip2VisionConfig

    return Blip2VisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
    )


def blip2_qformer_config(encoder_hidden_size: int = 32, hidden_size: int = 32, layers: int = 2):
    from transformers import Blip2QFormerConfig

    return Blip2QFormerConfig(
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=37,
        encoder_hidden_size=encoder_hidden_size,
        cross_attention_frequency=1,
        vocab_size=99,
    )


def llama_config(vocab_size: int, hidden_size: int = 32, layers: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )


def qwen2_config(vocab_size: int, hidden_size: int = 32, layers: int = 2):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )


def make_image(seed: int = 0, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    """A random image of the given size and PIL mode."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array, "RGB").convert(mode)


def tiny_llava(tokenizer=None, vision: str = "clip", text: str = "llama", **config_kwargs):
    """A random MiniLlava model (eval mode) and its tokenizer."""
    import torch

    from minillava.modeling import MiniLlavaConfig, MiniLlavaForConditionalGeneration

    tokenizer = tokenizer or make_tokenizer()
    vision_config = {"clip": clip_vision_config, "siglip": siglip_vision_config}[vision]()
    text_config = {"llama": llama_config, "qwen2": qwen2_config}[text](len(tokenizer))
    if vision == "siglip":
        config_kwargs.setdefault("vision_feature_select_strategy", "full")
    config = MiniLlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        **config_kwargs,
    )
    torch.manual_seed(0)
    return MiniLlavaForConditionalGeneration(config).eval(), tokenizer


def tiny_minigpt4(tokenizer=None, num_query_tokens: int = 4):
    """A random MiniGPT-4 model (eval mode) and its tokenizer."""
    import torch

    from minillava.modeling import MiniGPT4Config, MiniGPT4ForConditionalGeneration

    tokenizer = tokenizer or make_tokenizer()
    config = MiniGPT4Config(
        vision_config=blip2_vision_config(),
        qformer_config=blip2_qformer_config(),
        text_config=llama_config(len(tokenizer)),
        num_query_tokens=num_query_tokens,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(0)
    return MiniGPT4ForConditionalGeneration(config).eval(), tokenizer


def image_prompt_ids(tokenizer, model, texts: list[str]) -> list[list[int]]:
    """Token ids of `texts` with each `<image>` expanded to the model's image token count, BOS first."""
    n = model.config.image_seq_length
    return [
        [tokenizer.bos_token_id]
        + tokenizer(text.replace("<image>", "<image>" * n), add_special_tokens=False).input_ids
        for text in texts
    ]


def save_parts(folder, seed: int = 0) -> dict[str, str]:
    """Saves separately pretrained-looking parts (random): CLIP, SigLIP, BLIP-2 (with a tiny OPT), Llama, Qwen2,
    each with its tokenizer or image processor, as `minillava build` expects them. Returns name -> path."""
    from pathlib import Path

    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        BlipImageProcessor,
        CLIPImageProcessor,
        CLIPVisionModel,
        LlamaForCausalLM,
        OPTConfig,
        Qwen2ForCausalLM,
        SiglipImageProcessor,
        SiglipVisionModel,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    paths = {}
    tokenizer = make_tokenizer(image_tokens=())
    for name, model in (
        ("llama", LlamaForCausalLM(llama_config(len(tokenizer)))),
        ("qwen2", Qwen2ForCausalLM(qwen2_config(len(tokenizer)))),
    ):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    for name, model, image_processor in (
        ("clip", CLIPVisionModel(clip_vision_config()), CLIPImageProcessor(size={"shortest_edge": 16}, crop_size=16)),
        (
            "siglip",
            SiglipVisionModel(siglip_vision_config()),
            SiglipImageProcessor(size={"height": 16, "width": 16}),
        ),
    ):
        model.save_pretrained(folder / name)
        image_processor.save_pretrained(folder / name)
        paths[name] = str(folder / name)
    blip2_config = Blip2Config(
        vision_config=blip2_vision_config().to_dict(),
        qformer_config=blip2_qformer_config().to_dict(),
        text_config=OPTConfig(
            vocab_size=99,
            hidden_size=16,
            num_hidden_layers=1,
            ffn_dim=32,
            num_attention_heads=2,
            word_embed_proj_dim=16,
        ).to_dict(),
        num_query_tokens=4,
    )
    blip2 = Blip2ForConditionalGeneration(blip2_config)
    with torch.no_grad():
        blip2.query_tokens.normal_(std=0.02)
    blip2.save_pretrained(folder / "blip2")
    BlipImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder / "blip2")
    paths["blip2"] = str(folder / "blip2")
    return paths


def save_llava_hf(folder):
    """A tiny random llava-hf folder (16x16 images, 16 image tokens), written by transformers' own
    `LlavaForConditionalGeneration.save_pretrained` with its `LlavaProcessor`; returns `folder`."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = make_tokenizer()
    config = LlavaConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=llama_config(len(tokenizer)).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_HF_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    ).save_pretrained(folder)
    return folder
