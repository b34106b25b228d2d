"""Processor class for MiniLlava (LLaVA-1.5 and MiniGPT-4 style models)."""

import io
import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_utils import load_image
from transformers.processing_utils import MultiModalData, ProcessingKwargs, ProcessorMixin
from transformers.utils import is_torch_tensor, logging


logger = logging.get_logger(__name__)

_EXIF_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class MiniLlavaProcessorKwargs(ProcessingKwargs, total=False):
    _defaults = {
        "text_kwargs": {"padding": False, "return_token_type_ids": False},
        "images_kwargs": {},
    }


def to_rgb_image(image: Image.Image) -> Image.Image:
    """`image` upright (EXIF orientation applied) in RGB, with transparency composited on white.

    16-bit grey images (mode `I;16*`, or `I` / `F` holding values above 255) are scaled to 8 bits (65535 -> 255)
    instead of clipped; float images with values in [0, 1] are scaled by 255.
    """
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size else 0.0
        if image.mode.startswith("I;16") or peak > 255:
            array = array / 257.0
        elif image.mode == "F" and peak <= 1.0:
            array = array * 255.0
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _to_caller_position(position: int, replacements: list[dict[str, Any]], is_end: bool) -> int:
    """Maps a character position of the expanded text back to the text the caller passed."""
    for replacement in replacements:
        (start, end), (new_start, new_end) = replacement["span"], replacement["new_span"]
        if position <= new_start:
            return position - (new_start - start)
        if position < new_end:
            return end if is_end else start
    if replacements:
        return position - (replacements[-1]["new_span"][1] - replacements[-1]["span"][1])
    return position


# transformers 5 writes names into tokenizer_config.json that 4.x cannot read; both versions read the 4.x names.
TOKENIZER_CLASS_V4_NAMES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def make_tokenizer_config_portable(folder: str) -> None:
    """Rewrites a transformers 5 `tokenizer_config.json` in `folder` with the names transformers 4.x reads too."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    name = config.get("tokenizer_class")
    config["tokenizer_class"] = TOKENIZER_CLASS_V4_NAMES.get(name, name)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):  # 5.x: a list of extra special tokens; 4.x: `additional_special_tokens`
        del config["extra_special_tokens"]
        config["additional_special_tokens"] = list(dict.fromkeys(config.get("additional_special_tokens", []) + extra))
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


class MiniLlavaProcessor(ProcessorMixin):
    r"""
    Constructs a MiniLlava processor: an image processor and a tokenizer, plus the image placeholder expansion.

    Each `image_token` in a text stands for one image, in order, and is expanded to `num_image_tokens` copies of the
    image token before tokenizing (576 for CLIP ViT-L/14-336 with LLaVA's MLP, 32 for MiniGPT-4's Q-Former).
    Images are read from paths, bytes or PIL images, turned upright (EXIF) and converted to RGB; truncation never
    cuts into image tokens (it raises instead).

    Args:
        image_processor ([`BaseImageProcessor`], *optional*):
            The image processor, e.g. from `make_image_processor("llava-1.5", 336)`.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The tokenizer; `image_token` must be a single token of its vocabulary.
        chat_template (`str`, *optional*):
            A Jinja template that renders `{"type": "image"}` parts as `image_token`.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The image placeholder in texts, and the token that the model replaces with image features.
        num_image_tokens (`int`, *optional*, defaults to 576):
            The number of image tokens per image (the connector's output length).
        turn_separator (`str`, *optional*):
            The text that closes an assistant turn when it is not the tokenizer's EOS (MiniGPT-4's `###`): decoded
            answers lose the separator that ended them in `post_process_image_text_to_text` (what pipelines call).
    """

    attributes = ["image_processor", "tokenizer"]
    # transformers 4.x finds the sub-processor classes through these names; 5.x reads `__init__` instead and warns
    # that they are deprecated, so they are only set where they are read.
    if not hasattr(ProcessorMixin, "get_attributes"):
        image_processor_class = "AutoImageProcessor"
        tokenizer_class = "AutoTokenizer"
    valid_processor_kwargs = MiniLlavaProcessorKwargs
    # Saving copies this file and writes `auto_map`, so the folder loads with `trust_remote_code=True`.
    _auto_class = "AutoProcessor"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = "<image>",
        num_image_tokens: int = 576,
        turn_separator: str | None = None,
        **kwargs,
    ):
        if kwargs:
            logger.warning(f"{type(self).__name__} ignores the unknown arguments {sorted(kwargs)}.")
        if num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be at least 1, got {num_image_tokens}.")
        self.image_token = image_token
        self.num_image_tokens = num_image_tokens
        self.turn_separator = turn_separator
        if tokenizer is not None:
            ids = tokenizer.encode(image_token, add_special_tokens=False)
            if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"The image token {image_token!r} is not a single token of the tokenizer (it encodes to {ids}). "
                    f"Add it first: tokenizer.add_special_tokens({{'additional_special_tokens': [{image_token!r}]}}), "
                    "then resize the model's token embeddings."
                )
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saves the processor so that both transformers 4.x and 5.x load it."""
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        make_tokenizer_config_portable(save_directory)
        return saved

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens: bool = True, **kwargs):
        """Decodes generated ids (as transformers' processors do), without the `turn_separator` that ended each."""
        decoded = super().post_process_image_text_to_text(
            generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs
        )
        separator = self.turn_separator
        if not separator:
            return decoded

        def cut(text: str) -> str:  # prompts hold separators too: only the one that ended generation goes
            return text[: -len(separator)] if text.endswith(separator) else text

        return cut(decoded) if isinstance(decoded, str) else [cut(text) for text in decoded]

    def _get_num_multimodal_tokens(self, image_sizes: list[list[int]] | None = None, **kwargs) -> MultiModalData:
        """The number of image tokens each image of the given (height, width) sizes takes: `num_image_tokens`, for
        any size (the image processor resizes every image to the tower's input). vLLM's Transformers backend and
        transformers' own processing read this."""
        vision_data = {}
        if image_sizes is not None:
            vision_data["num_image_tokens"] = [self.num_image_tokens] * len(image_sizes)
            vision_data["num_image_patches"] = [1] * len(image_sizes)
        return MultiModalData(**vision_data)

    @property
    def image_token_id(self) -> int:
        """The id of `image_token` in the tokenizer."""
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        return [name for name in dict.fromkeys(names) if name != "token_type_ids"]

    def __call__(self, images=None, text: str | list[str] | None = None, **kwargs) -> BatchFeature:
        """
        Tokenizes `text` with each `image_token` expanded to `num_image_tokens` image tokens, and preprocesses `images`.

        Args:
            images (`PIL.Image.Image`, `str`, `os.PathLike`, `bytes`, or a list, or a list of lists, *optional*):
                The images. One image or a flat list is shared by the texts in placeholder order; a list of lists
                gives each text sample its own images. An image is a PIL image, a file path, a URL, raw file bytes,
                a `{"bytes": ..., "path": ...}` dict (`datasets.Image(decode=False)`), or an array or tensor (passed
                to the image processor as is).
            text (`str` or `list[str]`, *optional*):
                The text samples, with one `image_token` per image.
            return_mm_token_type_ids (`bool`, *optional*, defaults to `False`):
                Also return `mm_token_type_ids` (1 at image tokens, 0 elsewhere).
            return_text_replacement_offsets (`bool`, *optional*, defaults to `False`):
                Also return, per sample, the placeholders and their expansions as in transformers 5 (`span` in the
                text passed, `new_span` in the expanded text). `offset_mapping` then refers to the expanded text;
                otherwise it refers to the text passed, each image token spanning its placeholder.
            kwargs:
                Tokenizer arguments (`padding`, `truncation`, `max_length`, `padding_side`, `add_special_tokens`,
                `return_tensors`, ...) and image processor arguments, flat or as `text_kwargs` / `images_kwargs`.

        Returns:
            [`BatchFeature`]: `input_ids` and `attention_mask` when `text` is given, `pixel_values` when there are
            images (one row per image, across the batch, in placeholder order).
        """
        if text is None and images is None:
            raise ValueError(f"{type(self).__name__} needs `text`, `images` or both.")
        for modality in ("videos", "audio", "audios"):
            if kwargs.pop(modality, None):  # tools pass `videos=None` or `videos=[]` (lmms-eval: `audios=[]` too)
                raise ValueError(f"{type(self).__name__} handles images and text only, not {modality}.")
        return_mm_token_type_ids = kwargs.pop("return_mm_token_type_ids", False)
        return_replacement_offsets = kwargs.pop("return_text_replacement_offsets", False)

        output_kwargs = self._merge_kwargs(
            MiniLlavaProcessorKwargs, tokenizer_init_kwargs=self.tokenizer.init_kwargs, **kwargs
        )
        text_kwargs, images_kwargs = output_kwargs["text_kwargs"], output_kwargs["images_kwargs"]
        return_tensors = text_kwargs.pop("return_tensors", None)
        images_kwargs.pop("return_tensors", None)
        # These two may also come in `text_kwargs`; the tokenizer does not take them.
        return_mm_token_type_ids = text_kwargs.pop("return_mm_token_type_ids", None) or return_mm_token_type_ids
        return_replacement_offsets = (
            text_kwargs.pop("return_text_replacement_offsets", None) or return_replacement_offsets
        )

        texts = self._text_batch(text)
        image_groups = self._group_images(images, texts)
        flat_images = [
            self._load_image(image, sample_idx, image_idx)
            for sample_idx, group in enumerate(image_groups)
            for image_idx, image in enumerate(group)
        ]

        data, replacements = {}, None
        if texts is not None:
            text_inputs, replacements = self._tokenize(texts, text_kwargs, return_replacement_offsets)
            if return_mm_token_type_ids:
                image_token_id = self.image_token_id
                text_inputs["mm_token_type_ids"] = [
                    [int(token == image_token_id) for token in ids] for ids in text_inputs["input_ids"]
                ]
            data.update(text_inputs)
        if flat_images:
            data.update(self.image_processor(flat_images, return_tensors=return_tensors, **images_kwargs))

        batch = BatchFeature(data=data, tensor_type=return_tensors)
        if return_replacement_offsets and replacements is not None:
            batch["text_replacement_offsets"] = replacements
        return batch

    def _text_batch(self, text: str | list[str] | None) -> list[str] | None:
        """`text` as a list of strings."""
        if text is None:
            return None
        if isinstance(text, str):
            return [text]
        if isinstance(text, (list, tuple)) and text and all(isinstance(sample, str) for sample in text):
            return list(text)
        raise TypeError("`text` must be a string or a non-empty list of strings.")

    def _group_images(self, images, texts: list[str] | None) -> list[list]:
        """The images of each text sample, checked against its placeholders."""
        is_list = isinstance(images, (list, tuple))
        if texts is None:
            if is_list and any(isinstance(group, (list, tuple)) for group in images):
                return [self._as_list(group) for group in images]
            return [self._as_list(images)]

        counts = [sample.count(self.image_token) for sample in texts]
        if images is None:
            groups = [[] for _ in texts]
        elif is_list and any(isinstance(group, (list, tuple)) for group in images):
            if len(images) != len(texts):
                raise ValueError(
                    f"Got {len(images)} lists of images for {len(texts)} text samples; pass one list per sample."
                )
            groups = [self._as_list(group) for group in images]
        elif len(texts) == 1:
            groups = [self._as_list(images)]
        else:
            flat = self._as_list(images)
            if len(flat) != sum(counts):
                raise ValueError(
                    f"The {len(texts)} text samples hold {sum(counts)} {self.image_token} placeholders "
                    f"({counts} per sample) but {len(flat)} images were given. Each placeholder takes one image; "
                    "pass one list of images per sample to pair them explicitly."
                )
            ends = np.cumsum(counts).tolist()
            groups = [flat[end - count : end] for end, count in zip(ends, counts, strict=True)]

        for sample_idx, (group, count) in enumerate(zip(groups, counts, strict=True)):
            if len(group) != count:
                raise ValueError(
                    f"Sample {sample_idx} has {count} {self.image_token} placeholder(s) but {len(group)} image(s). "
                    "Each placeholder takes one image, in order."
                )
        return groups

    @staticmethod
    def _as_list(images) -> list:
        """`images` as a list: a list or tuple as is, `None` as no image, anything else as one image."""
        if images is None:
            return []
        return list(images) if isinstance(images, (list, tuple)) else [images]

    def _load_image(self, image, sample_idx: int, image_idx: int):
        """`image` read and converted to an upright RGB PIL image; arrays and tensors are returned as they are."""
        if isinstance(image, np.ndarray) or is_torch_tensor(image):
            return image
        name = f"image {image_idx} of sample {sample_idx}"
        if isinstance(image, dict):
            image = image.get("bytes") or image.get("path")
        try:
            if isinstance(image, (str, os.PathLike)):
                source = os.fspath(image)
                name = f"{name} ({source!r})"
                if source.startswith(("http://", "https://", "data:")):
                    image = load_image(source)
                else:
                    image = Image.open(source)
            elif isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image))
            elif not isinstance(image, Image.Image):
                raise TypeError(f"unsupported image type {type(image).__name__}")
            image.load()
            return to_rgb_image(image)
        except Exception as error:
            raise ValueError(f"Could not read {name}: {error}") from error

    def _tokenize(
        self, texts: list[str], text_kwargs: dict, return_replacement_offsets: bool
    ) -> tuple[dict, list[list[dict[str, Any]]]]:
        """Expands the placeholders, tokenizes, and checks that every image token survived truncation."""
        if text_kwargs.get("return_overflowing_tokens"):
            raise ValueError(
                "return_overflowing_tokens is not supported: it would split the image tokens of a sample."
            )
        expansions = [self._expand_placeholders(sample) for sample in texts]
        expanded = [prompt for prompt, _ in expansions]
        all_replacements = [replacements for _, replacements in expansions]

        # A text that already starts with BOS (e.g. rendered by the chat template) must not get a second one.
        bos_token = self.tokenizer.bos_token
        strip_bos = (
            text_kwargs.get("add_special_tokens", True)
            and bos_token is not None
            and any(prompt.startswith(bos_token) for prompt in expanded)
            and self._tokenizer_adds_bos()
        )
        shifts = [len(bos_token) if strip_bos and prompt.startswith(bos_token) else 0 for prompt in expanded]
        prompts = [prompt[shift:] for prompt, shift in zip(expanded, shifts, strict=True)]

        text_inputs = dict(self.tokenizer(prompts, **text_kwargs))

        self._check_image_tokens(text_inputs["input_ids"], prompts, all_replacements, text_kwargs)

        if "offset_mapping" in text_inputs:
            text_inputs["offset_mapping"] = [
                self._map_offsets(offsets, shift, replacements, to_caller_text=not return_replacement_offsets)
                for offsets, shift, replacements in zip(
                    text_inputs["offset_mapping"], shifts, all_replacements, strict=True
                )
            ]
        return text_inputs, all_replacements

    def _check_image_tokens(
        self,
        input_ids: list[list[int]],
        prompts: list[str],
        all_replacements: list[list[dict[str, Any]]],
        text_kwargs: dict,
    ) -> None:
        """Raises when a sample lost image tokens to truncation, or its placeholders did not tokenize as expected."""
        image_token_id = self.image_token_id
        for sample_idx, ids in enumerate(input_ids):
            expected = len(all_replacements[sample_idx]) * self.num_image_tokens
            found = sum(1 for token in ids if token == image_token_id)
            if found == expected:
                continue
            if found < expected and text_kwargs.get("truncation") not in (None, False, "do_not_truncate"):
                add_special_tokens = text_kwargs.get("add_special_tokens", True)
                length = len(self.tokenizer(prompts[sample_idx], add_special_tokens=add_special_tokens)["input_ids"])
                max_length = text_kwargs.get("max_length") or self.tokenizer.model_max_length
                raise ValueError(
                    f"Sample {sample_idx} is {length} tokens long ({expected} of them image tokens) and truncating it "
                    f"to max_length={max_length} would cut into its image tokens. Raise max_length (or turn "
                    "truncation off); image tokens are never truncated."
                )
            raise ValueError(
                f"Sample {sample_idx} should hold {expected} image tokens but has {found} after tokenization; "
                f"{self.image_token!r} must stay a single special token of the tokenizer."
            )

    def _expand_placeholders(self, sample: str) -> tuple[str, list[dict[str, Any]]]:
        """`sample` with each placeholder expanded, and the expansions (as transformers 5 describes them)."""
        expansion = self.image_token * self.num_image_tokens
        pieces, replacements, last = [], [], 0
        for match in re.finditer(re.escape(self.image_token), sample):
            start, end = match.span()
            new_start = start + len(replacements) * (len(expansion) - len(self.image_token))
            replacements.append(
                {
                    "type": "image",
                    "span": (start, end),
                    "new_span": (new_start, new_start + len(expansion)),
                    "text": self.image_token,
                    "replacement": expansion,
                }
            )
            pieces += [sample[last:start], expansion]
            last = end
        pieces.append(sample[last:])
        return "".join(pieces), replacements

    @staticmethod
    def _map_offsets(
        offsets: list[tuple[int, int]], shift: int, replacements: list[dict[str, Any]], to_caller_text: bool
    ) -> list[tuple[int, int]]:
        """The tokens' character spans in the expanded text, or in the caller's text when `to_caller_text`.

        Added special tokens and padding get an empty span where they sit, so the starts never decrease (4.x finds
        the assistant tokens by bisecting them).
        """
        mapped, position = [], 0
        for start, end in offsets:
            if start == end:
                mapped.append((position, position))
                continue
            start, end = start + shift, end + shift
            if to_caller_text:
                start = _to_caller_position(start, replacements, is_end=False)
                end = _to_caller_position(end, replacements, is_end=True)
            mapped.append((start, end))
            position = end
        return mapped

    def _tokenizer_adds_bos(self) -> bool:
        """Whether the tokenizer puts BOS in front when `add_special_tokens=True`."""
        ids = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return bool(ids) and ids[0] == self.tokenizer.bos_token_id


__all__ = ["MiniLlavaProcessor", "make_tokenizer_config_portable", "to_rgb_image"]
