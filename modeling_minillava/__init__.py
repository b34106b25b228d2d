"""minillava model classes: LLaVA-1.5 (`MiniLlava*`) and MiniGPT-4 (`MiniGPT4*`)."""

import transformers
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_minigpt4 import MiniGPT4Config
from .configuration_minillava import MiniLlavaConfig
from .modeling_base import MiniVLMForConditionalGeneration
from .modeling_minigpt4 import MiniGPT4ForConditionalGeneration, MiniGPT4Model
from .modeling_minillava import MiniLlavaForConditionalGeneration, MiniLlavaModel


ARCHITECTURES = {
    "llava-1.5": (MiniLlavaConfig, MiniLlavaForConditionalGeneration),
    "minigpt4": (MiniGPT4Config, MiniGPT4ForConditionalGeneration),
}


def register_auto_classes() -> None:
    """Registers both architectures with AutoConfig, AutoModel, AutoModelForImageTextToText (and
    AutoModelForVision2Seq where the installed transformers has it) and AutoProcessor, so that saved folders load
    with the installed code, without `trust_remote_code`."""
    from minillava.processing.processing_minillava import MiniLlavaProcessor

    auto_model_classes = [AutoModelForImageTextToText]
    if hasattr(transformers, "AutoModelForVision2Seq"):
        auto_model_classes.append(transformers.AutoModelForVision2Seq)
    for config_class, model_class in ARCHITECTURES.values():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class.model_class, exist_ok=True)
        for auto_class in auto_model_classes:
            auto_class.register(config_class, model_class, exist_ok=True)
        AutoProcessor.register(config_class, MiniLlavaProcessor, exist_ok=True)


register_auto_classes()

__all__ = [
    "ARCHITECTURES",
    "MiniGPT4Config",
    "MiniGPT4ForConditionalGeneration",
    "MiniGPT4Model",
    "MiniLlavaConfig",
    "MiniLlavaForConditionalGeneration",
    "MiniLlavaModel",
    "MiniVLMForConditionalGeneration",
    "register_auto_classes",
]
