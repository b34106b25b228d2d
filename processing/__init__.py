"""minillava processing: the processor, the chat templates and the image processors of each recipe."""

# Registers the model classes and this processor with the Auto classes, so saved folders load without a
# `trust_remote_code` prompt once minillava is imported.
import minillava.modeling  # noqa: F401

from .chat_templates import (
    CHAT_TEMPLATES,
    DEFAULT_IMAGE_TOKEN,
    LLAVA_SYSTEM_PROMPT,
    MINIGPT4_LLAMA2,
    MINIGPT4_VICUNA0,
    PLAIN,
    VICUNA_V1,
    get_chat_template,
)
from .image_processing import IMAGE_PROCESSOR_RECIPES, make_image_processor
from .processing_minillava import MiniLlavaProcessor, to_rgb_image


__all__ = [
    "CHAT_TEMPLATES",
    "DEFAULT_IMAGE_TOKEN",
    "IMAGE_PROCESSOR_RECIPES",
    "LLAVA_SYSTEM_PROMPT",
    "MINIGPT4_LLAMA2",
    "MINIGPT4_VICUNA0",
    "PLAIN",
    "VICUNA_V1",
    "MiniLlavaProcessor",
    "get_chat_template",
    "make_image_processor",
    "to_rgb_image",
]
