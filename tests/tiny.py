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
