"""Tests for the MiniLlava processor, the chat templates and the recipe image processors."""

import inspect
import io
import json
import os
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers
from PIL import Image
from tiny import CORPUS, SPECIAL_TOKENS, make_image, make_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, ProcessorMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from minillava.processing import (
    CHAT_TEMPLATES,
    LLAVA_SYSTEM_PROMPT,
    MiniLlavaProcessor,
    get_chat_template,
    make_image_processor,
    to_rgb_image,
)


REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 16


def with_bos(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """`tokenizer`, made to put BOS in front of every encoding like Llama's tokenizer does."""
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    return tokenizer


def llama_like_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer: words carry their leading space as "▁" (so do their offsets), BOS in front."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL_TOKENS, initial_alphabet=list(string.printable), show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return with_bos(fast)


TOKENIZERS = {"byte_level": lambda: with_bos(make_tokenizer()), "llama_like": llama_like_tokenizer}


def make_processor(
    template: str = "vicuna_v1", num_image_tokens: int = 4, tokenizer: str = "byte_level"
) -> MiniLlavaProcessor:
    return MiniLlavaProcessor(
        image_processor=make_image_processor("llava-1.5", IMAGE_SIZE),
        tokenizer=TOKENIZERS[tokenizer](),
        chat_template=get_chat_template(template),
        num_image_tokens=num_image_tokens,
    )


def two_turns(image=None) -> list[dict]:
    image_part = {"type": "image", "image": image} if image is not None else {"type": "image"}
    return [
        {"role": "user", "content": [image_part, {"type": "text", "text": "What is in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
        {"role": "user", "content": [{"type": "text", "text": "What colour is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
    ]


def pixels(processor: MiniLlavaProcessor, image) -> np.ndarray:
    return np.asarray(processor(images=[image], text="<image>", return_tensors="np")["pixel_values"])


# Placeholder expansion and image/text pairing


def test_each_placeholder_becomes_num_image_tokens_image_tokens():
    processor = make_processor(num_image_tokens=5)
    texts = ["USER: <image>\nWhat is it? <image> ASSISTANT:", "USER: hi ASSISTANT:"]
    out = processor(
        images=[[make_image(0), make_image(1)], []],
        text=texts,
        padding=True,
        padding_side="left",
        return_tensors="pt",
        return_mm_token_type_ids=True,
    )
    image_token_id = processor.image_token_id
    assert (out["input_ids"] == image_token_id).sum(dim=1).tolist() == [10, 0]
    assert out["mm_token_type_ids"].sum(dim=1).tolist() == [10, 0]
    assert tuple(out["pixel_values"].shape) == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert out["attention_mask"][1, 0] == 0 and out["input_ids"][1, 0] == processor.tokenizer.pad_token_id
    assert "token_type_ids" not in out
    assert processor.batch_decode(out["input_ids"][1:], skip_special_tokens=True) == ["USER: hi ASSISTANT:"]


def test_text_only_call():
    processor = make_processor()
    out = processor(text="USER: hi ASSISTANT:", return_tensors="pt")
    assert list(out.keys()) == ["input_ids", "attention_mask"]
    assert processor.decode(out["input_ids"][0]) == "<s>USER: hi ASSISTANT:"


@pytest.mark.parametrize("videos", [None, []])
def test_empty_video_arguments_from_tools_are_accepted(videos):
    """lmms-eval and other tools pass `videos=None` or `videos=[]`: same result as without them."""
    processor = make_processor()
    expected = processor(images=make_image(), text="<image> hi", return_tensors="pt")
    out = processor(images=make_image(), text="<image> hi", videos=videos, return_tensors="pt")
    assert out.keys() == expected.keys() and all((out[k] == expected[k]).all() for k in out)
    with pytest.raises(ValueError, match="not videos"):
        processor(text="hi", videos=[np.zeros((2, 8, 8, 3), dtype=np.uint8)])


def test_num_multimodal_tokens_for_any_image_size():
    processor = make_processor(num_image_tokens=4)
    data = processor._get_num_multimodal_tokens(image_sizes=[[30, 40], [336, 672]])
    assert data.num_image_tokens == [4, 4] and data.num_image_patches == [1, 1]
    out = processor(images=[make_image(size=(40, 30)), make_image(size=(672, 336))], text=["<image> a <image> b"])
    assert out["input_ids"][0].count(processor.image_token_id) == sum(data.num_image_tokens)


def test_model_input_names_and_output_keys():
    processor = make_processor()
    out = processor(images=make_image(), text="<image> hi", return_tensors="pt")
    assert list(out.keys()) == processor.model_input_names == ["input_ids", "attention_mask", "pixel_values"]


def test_image_inputs_of_every_kind_give_the_same_pixels(tmp_path):
    processor = make_processor()
    path = tmp_path / "image.png"
    make_image(5).save(path)
    data = path.read_bytes()
    expected = pixels(processor, make_image(5))
    for image in (str(path), path, data, {"bytes": data, "path": None}, {"bytes": None, "path": str(path)}):
        np.testing.assert_array_equal(pixels(processor, image), expected)


def test_flat_image_list_is_shared_by_the_batch_in_order():
    processor = make_processor()
    images = [make_image(0), make_image(1), make_image(2)]
    flat = processor(images=images, text=["<image> a", "b <image> <image>"], padding=True, return_tensors="np")
    nested = processor(images=[images[:1], images[1:]], text=["<image> a", "b <image> <image>"], padding=True)
    np.testing.assert_array_equal(flat["pixel_values"], np.asarray(nested["pixel_values"]))
    np.testing.assert_array_equal(flat["pixel_values"][2], pixels(processor, images[2])[0])


@pytest.mark.parametrize(
    "images, texts, message",
    [
        ([[make_image()], [make_image()]], ["<image> a", "b"], "Sample 1 has 0 <image> placeholder.* but 1 image"),
        (None, ["a", "<image> b"], "Sample 1 has 1 <image> placeholder.* but 0 image"),
        ([make_image(), make_image()], ["<image> a"], "Sample 0 has 1 <image> placeholder.* but 2 image"),
        ([make_image()], ["<image> a", "<image> b"], r"2 <image> placeholders \(\[1, 1\] per sample\) but 1 images"),
        ([[make_image()]], ["<image> a", "<image> b"], "Got 1 lists of images for 2 text samples"),
    ],
)
def test_placeholder_and_image_counts_must_match(images, texts, message):
    with pytest.raises(ValueError, match=message):
        make_processor()(images=images, text=texts)


def test_image_token_must_be_in_the_vocabulary():
    with pytest.raises(ValueError, match="'<image>' is not a single token of the tokenizer"):
        MiniLlavaProcessor(make_image_processor("llava-1.5", IMAGE_SIZE), make_tokenizer(image_tokens=()))


# Reading images


def test_unreadable_images_are_named(tmp_path):
    processor = make_processor()
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ValueError, match=f"image 0 of sample 0 \\('{missing}'\\)"):
        processor(images=[str(missing)], text="<image>")

    truncated = tmp_path / "truncated.jpg"
    buffer = io.BytesIO()
    make_image(0, size=(64, 64)).save(buffer, format="JPEG")
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="truncated.jpg"):
        processor(images=[truncated], text="<image>")

    with pytest.raises(ValueError, match="Could not read image 1 of sample 1"):
        processor(images=[[make_image()], [make_image(), b"not an image"]], text=["<image>", "<image><image>"])


@pytest.mark.parametrize(
    "image, expected",
    [
        (Image.new("RGBA", (2, 1), (10, 20, 30, 0)), (255, 255, 255)),  # transparent -> white, not black
        (Image.new("RGBA", (2, 1), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (2, 1), (100, 0)), (255, 255, 255)),
        (Image.new("LA", (2, 1), (100, 255)), (100, 100, 100)),
        (Image.new("L", (2, 1), 77), (77, 77, 77)),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 0)), (255, 255, 255)),
        (Image.new("CMYK", (2, 1), (0, 0, 0, 255)), (0, 0, 0)),
        (Image.fromarray(np.full((1, 2), 65535, dtype=np.uint16)), (255, 255, 255)),  # I;16, scaled not clipped
        (Image.fromarray(np.full((1, 2), 128 * 257, dtype=np.uint16)), (128, 128, 128)),
        (Image.fromarray(np.full((1, 2), 128 * 257, dtype=np.int32)), (128, 128, 128)),  # I with 16-bit data
        (Image.fromarray(np.full((1, 2), 0.5, dtype=np.float32)), (128, 128, 128)),  # F in [0, 1]
    ],
    ids=lambda value: value.mode if isinstance(value, Image.Image) else None,
)
def test_image_modes_become_rgb(image, expected):
    rgb = to_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == expected


def test_palette_transparency_becomes_white():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30] * 256)
    image.info["transparency"] = 0
    assert to_rgb_image(image).getpixel((0, 0)) == (255, 255, 255)


def test_files_in_other_modes_are_read_like_their_rgb_version(tmp_path):
    processor = make_processor()
    left_clear = np.zeros((20, 30, 4), dtype=np.uint8)
    left_clear[:, 15:] = (200, 30, 40, 255)
    Image.fromarray(left_clear, "RGBA").save(tmp_path / "rgba.png")
    white_left = np.full((20, 30, 3), 255, dtype=np.uint8)
    white_left[:, 15:] = (200, 30, 40)
    np.testing.assert_array_equal(
        pixels(processor, tmp_path / "rgba.png"), pixels(processor, Image.fromarray(white_left))
    )

    grey = np.tile(np.arange(0, 240, 8, dtype=np.uint16), (20, 1))
    Image.fromarray(grey * 257).save(tmp_path / "grey16.png")  # 16-bit PNG
    expected = Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    np.testing.assert_array_equal(pixels(processor, tmp_path / "grey16.png"), pixels(processor, expected))


def test_exif_orientation_is_applied(tmp_path):
    processor = make_processor()
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :20] = (255, 0, 0)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to display
    Image.fromarray(image).save(path, exif=exif)

    stored = Image.fromarray(np.asarray(Image.open(path).convert("RGB")))  # the pixels as stored, without EXIF
    upright = stored.transpose(Image.Transpose.ROTATE_270)
    assert to_rgb_image(Image.open(path)).size == (20, 40)
    np.testing.assert_array_equal(pixels(processor, path), pixels(processor, upright))
    assert not np.array_equal(pixels(processor, path), pixels(processor, stored))


# Truncation


def test_truncation_never_cuts_image_tokens():
    processor = make_processor(num_image_tokens=8)
    texts = ["<image> short", "USER: <image>\nWhat is in the image? ASSISTANT:"]
    with pytest.raises(ValueError, match=r"Sample 1 is \d+ tokens long \(8 of them image tokens\).*max_length=12"):
        processor(images=[make_image(0), make_image(1)], text=texts, truncation=True, max_length=12)

    # Text after the last image may be cut.
    out = processor(images=[make_image(0)], text=["<image> What is in the image?"], truncation=True, max_length=12)
    assert len(out["input_ids"][0]) == 12 and out["input_ids"][0].count(processor.image_token_id) == 8

    processor.tokenizer.truncation_side = "left"
    with pytest.raises(ValueError, match="Sample 0 is .* cut into its image tokens"):
        processor(images=[make_image(0)], text=["<image> What is in the image?"], truncation=True, max_length=12)


# Chat templates


EXPECTED_RENDERINGS = {
    "vicuna_v1": (
        f"<s>{LLAVA_SYSTEM_PROMPT} USER: <image>\nWhat is in the image? ASSISTANT: A red circle.</s>"
        "USER: What colour is it? ASSISTANT: Red.</s>"
    ),
    "plain": "<s><image>A red circle.\n",
    "minigpt4_vicuna0": (
        "<s>###Human: <Img><image></Img> What is in the image? ###Assistant: A red circle.###"
        "Human: What colour is it? ###Assistant: Red.###"
    ),
    "minigpt4_llama2": (
        "<s>[INST] <Img><image></Img> What is in the image? [/INST] A red circle.</s>"
        "<s>[INST] What colour is it? [/INST] Red.</s>"
    ),
}
EXPECTED_GENERATION_PROMPTS = {
    "vicuna_v1": f"<s>{LLAVA_SYSTEM_PROMPT} USER: <image>\nWhat is in the image? ASSISTANT:",
    "plain": "<s><image>",
    "minigpt4_vicuna0": "<s>###Human: <Img><image></Img> What is in the image? ###Assistant:",
    "minigpt4_llama2": "<s>[INST] <Img><image></Img> What is in the image? [/INST]",
}
# The supervised text of `two_turns()`: each answer and its end-of-turn marker, nothing else.
EXPECTED_ANSWERS = {
    "vicuna_v1": ["A red circle.</s>", "Red.</s>"],
    "plain": ["A red circle.\n"],
    "minigpt4_vicuna0": ["A red circle.###", "Red.###"],
    "minigpt4_llama2": ["A red circle.</s>", "Red.</s>"],
}


def conversation_for(template: str, image=None) -> list[dict]:
    return two_turns(image)[:2] if template == "plain" else two_turns(image)


@pytest.mark.parametrize("template", list(CHAT_TEMPLATES))
def test_templates_render_the_original_formats(template):
    processor = make_processor(template)
    conversation = conversation_for(template)
    assert processor.apply_chat_template(conversation) == EXPECTED_RENDERINGS[template]
    prompt = processor.apply_chat_template(conversation[:1], add_generation_prompt=True)
    assert prompt == EXPECTED_GENERATION_PROMPTS[template]


def test_templates_take_a_system_turn_and_string_content():
    conversation = [
        {"role": "system", "content": "Give the following image: <Img>ImageContent</Img>."},
        {"role": "user", "content": "<Img><image></Img> Describe this image in detail."},
    ]
    rendered = make_processor("minigpt4_vicuna0").apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == (
        "<s>Give the following image: <Img>ImageContent</Img>.###Human: <Img><image></Img> Describe this image "
        "in detail. ###Assistant:"
    )
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]}] + two_turns()[:1]
    rendered = make_processor("vicuna_v1").apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == "<s>Be brief. USER: <image>\nWhat is in the image? ASSISTANT:"
    rendered = make_processor("minigpt4_llama2").apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<Img><image></Img> What is in the image? [/INST]"
    # As LLaVA's `preprocess_plain`, stage 1 keeps only the images of the user turn.
    conversation = [
        {"role": "user", "content": "<image>\nDescribe this image."},
        {"role": "assistant", "content": "A red circle."},
    ]
    assert make_processor("plain").apply_chat_template(conversation) == "<s><image>A red circle.\n"


def test_get_chat_template():
    assert get_chat_template("vicuna_v1") == CHAT_TEMPLATES["vicuna_v1"]
    processor = make_processor()
    processor.chat_template = get_chat_template("minigpt4_llama2", image_token="<|image|>")
    assert processor.apply_chat_template(two_turns()[:1]).startswith("<s>[INST] <Img><|image|></Img> What")
    with pytest.raises(ValueError, match="vicuna_v1, plain, minigpt4_vicuna0, minigpt4_llama2"):
        get_chat_template("llava")


@pytest.mark.parametrize("tokenizer", list(TOKENIZERS))
@pytest.mark.parametrize("template", list(CHAT_TEMPLATES))
def test_assistant_mask_covers_answers_and_end_markers_only(template, tokenizer):
    processor = make_processor(template, tokenizer=tokenizer)
    out = processor.apply_chat_template(
        conversation_for(template, make_image()),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
    )
    ids, mask = out["input_ids"][0].tolist(), out["assistant_masks"][0].tolist()
    runs, run = [], []
    for token, supervised in zip(ids + [None], mask + [0], strict=True):
        if supervised:
            run.append(token)
        elif run:
            runs.append(processor.decode(run).lstrip(" "))
            run = []
    assert runs == EXPECTED_ANSWERS[template]
    assert ids.count(processor.image_token_id) == processor.num_image_tokens
    assert tuple(out["pixel_values"].shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_assistant_masks_of_a_padded_batch(padding_side):
    processor = make_processor(tokenizer="llama_like")
    padding = {"padding": True, "padding_side": padding_side}
    # transformers 5 takes the processor's arguments in `processor_kwargs`, 4.x with the template's.
    if "processor_kwargs" in inspect.signature(ProcessorMixin.apply_chat_template).parameters:
        padding = {"processor_kwargs": padding}
    out = processor.apply_chat_template(
        [two_turns(make_image(0)), two_turns(make_image(1))[:2]],
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        return_assistant_tokens_mask=True,
        **padding,
    )
    supervised = [
        processor.decode([token for token, keep in zip(ids, mask, strict=True) if keep])
        for ids, mask in zip(out["input_ids"].tolist(), out["assistant_masks"].tolist(), strict=True)
    ]
    assert supervised == ["A red circle.</s> Red.</s>", "A red circle.</s>"]
    assert out["attention_mask"][1].sum() < out["attention_mask"].shape[1]


@pytest.mark.parametrize("template", list(CHAT_TEMPLATES))
def test_bos_is_not_doubled(template):
    processor = make_processor(template)
    bos = processor.tokenizer.bos_token_id
    image = make_image()
    conversation = conversation_for(template, image)[:1]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered.startswith("<s>")

    chat_ids = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)[0]
    default_ids = processor(images=[image], text=rendered)["input_ids"][0]
    trl_ids = processor(images=[image], text=rendered, add_special_tokens=False)["input_ids"][0]
    tokenizer_bos_ids = processor(images=[image], text=rendered[len("<s>") :])["input_ids"][0]
    assert list(chat_ids) == default_ids == trl_ids == tokenizer_bos_ids
    assert default_ids[:2].count(bos) == 1


def test_offsets_refer_to_the_text_passed():
    processor = make_processor(num_image_tokens=5)
    text = "USER: <image>\nhi"
    out = processor(images=[make_image()], text=text, return_offsets_mapping=True)
    ids, offsets = out["input_ids"][0], out["offset_mapping"][0]
    assert {tuple(span) for token, span in zip(ids, offsets, strict=True) if token == processor.image_token_id} == {
        (6, 13)
    }
    for token, (start, end) in zip(ids, offsets, strict=True):
        if token not in (processor.image_token_id, processor.tokenizer.bos_token_id):
            assert text[start:end] == processor.decode([token])

    out = processor(
        images=[make_image()], text=text, return_offsets_mapping=True, return_text_replacement_offsets=True
    )
    expanded = text.replace("<image>", "<image>" * 5)
    assert [(r["span"], r["new_span"]) for r in out["text_replacement_offsets"][0]] == [((6, 13), (6, 41))]
    for token, (start, end) in zip(out["input_ids"][0], out["offset_mapping"][0], strict=True):
        if token != processor.tokenizer.bos_token_id:
            assert expanded[start:end] == processor.decode([token])


# Parity with transformers' LlavaProcessor


def test_same_inputs_as_llava_processor():
    processor = make_processor(num_image_tokens=(IMAGE_SIZE // 4) ** 2)
    llava = transformers.LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=4,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    texts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\nDescribe this image in detail. ASSISTANT:"]
    images = [make_image(0, size=(40, 30)), make_image(1, size=(20, 36))]
    ours = processor(images=images, text=texts, padding=True, return_tensors="pt")
    theirs = llava(images=images, text=texts, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert ours[key].equal(theirs[key]), key


# Image processors


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """LLaVA's padding (haotian-liu/LLaVA, llava/mm_utils.py)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background_color)
    result.paste(image, (0, (side - height) // 2) if width > height else ((side - width) // 2, 0))
    return result


@pytest.mark.parametrize("size", [(40, 24), (24, 40), (20, 20)])
def test_llava_image_processor_pads_like_llava(size):
    image = make_image(0, size=size)
    clip_class = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    clip = clip_class(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=PILImageResampling.BICUBIC,
    )
    padded = expand2square(image, tuple(int(x * 255) for x in OPENAI_CLIP_MEAN))
    expected = clip(padded, return_tensors="np")["pixel_values"]
    got = make_image_processor("llava-1.5", IMAGE_SIZE)(image, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_minigpt4_image_processor_resizes_without_crop():
    image = make_image(0, size=(40, 24))
    resized = np.asarray(image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), dtype=np.float64) / 255
    expected = ((resized - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD).transpose(2, 0, 1)
    got = make_image_processor("minigpt4", IMAGE_SIZE)(image, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(ValueError, match="llava-1.5, minigpt4"):
        make_image_processor("llava", IMAGE_SIZE)


# Save and reload as remote code, with our package out of reach


_SHARED = r"""
import json, sys
repo, save_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, repo + "/tests")
from tiny import make_image

def summary(processor):
    conversation = [
        {"role": "user", "content": [{"type": "image", "image": make_image(3)}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]
    chat = processor.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_tensors="pt", return_assistant_tokens_mask=True
    )
    direct = processor(images=[make_image(4)], text="USER: <image>\nhi ASSISTANT:")
    return {
        "class": type(processor).__name__,
        "module": type(processor).__module__,
        "image_token": processor.image_token,
        "num_image_tokens": processor.num_image_tokens,
        "chat_template": processor.chat_template,
        "chat_input_ids": chat["input_ids"].tolist(),
        "assistant_masks": chat["assistant_masks"].tolist(),
        "pixel_values": chat["pixel_values"].flatten().tolist(),
        "direct_input_ids": direct["input_ids"],
    }
"""

_SAVE_BODY = r"""
sys.path.insert(0, repo + "/processing")
from tiny import make_tokenizer
from chat_templates import get_chat_template
from image_processing import make_image_processor
from processing_minillava import MiniLlavaProcessor

processor = MiniLlavaProcessor(
    make_image_processor("llava-1.5", 16), make_tokenizer(), get_chat_template("vicuna_v1"), num_image_tokens=7
)
MiniLlavaProcessor.register_for_auto_class("AutoProcessor")
processor.save_pretrained(save_dir)
print(json.dumps(summary(processor)))
"""

_BLOCK_OUR_PACKAGE = r"""
import sys
for name in ("minillava", "processing", "processing_minillava", "modeling_minillava"):
    sys.modules[name] = None
"""

_LOAD_BODY = r"""
from transformers import AutoProcessor

print(json.dumps(summary(AutoProcessor.from_pretrained(save_dir, trust_remote_code=True))))
"""

_SAVE = _SHARED + _SAVE_BODY
_LOAD = _BLOCK_OUR_PACKAGE + _SHARED + _LOAD_BODY


def _run(python: str, script: str, save_dir: Path, cwd: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [python, "-c", script, str(REPO), str(save_dir)], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("python_env", ["current", "MINILLAVA_PY457"])
def test_remote_code_round_trip(python_env, tmp_path):
    python = sys.executable if python_env == "current" else os.environ.get(python_env)
    if python is None:
        pytest.skip(f"set {python_env} to a Python with transformers 4.57 to run the 4.57 round trip")
    save_dir = tmp_path / "saved"
    saved = _run(python, _SAVE, save_dir, tmp_path)
    loaded = _run(python, _LOAD, save_dir, tmp_path)

    config = json.loads((save_dir / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_minillava.MiniLlavaProcessor"}
    assert (config["image_token"], config["num_image_tokens"]) == ("<image>", 7)
    assert (save_dir / "processing_minillava.py").read_text() == (
        REPO / "processing/processing_minillava.py"
    ).read_text()
    assert loaded["module"].startswith("transformers_modules.")
    np.testing.assert_allclose(loaded.pop("pixel_values"), saved.pop("pixel_values"), atol=1e-5)
    loaded.pop("module"), saved.pop("module")
    assert loaded == saved
