"""Image processors for the LLaVA-1.5 and MiniGPT-4 recipes, built from transformers' own classes."""

import transformers
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling


IMAGE_PROCESSOR_RECIPES = ("llava-1.5", "minigpt4")


def _pil_image_processor_class(name: str) -> type[BaseImageProcessor]:
    """The PIL-backed class called `name`: `<name>Pil` in transformers 5.x, `<name>` itself in 4.x.

    transformers 5.x picks a torchvision backend for `<name>` when torchvision is installed; the PIL one resizes
    exactly as the original repositories did (PIL bicubic on the uint8 image).
    """
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def make_image_processor(
    recipe: str,
    image_size: int,
    image_mean: list[float] | None = None,
    image_std: list[float] | None = None,
) -> BaseImageProcessor:
    """The image processor of a recipe, for a vision tower that takes `image_size` x `image_size` pixels.

    - `"llava-1.5"`: LLaVA-1.5's `--image_aspect_ratio pad`. Pads to a square with the mean colour
      (`expand2square(image, tuple(int(x * 255) for x in image_mean))`), resizes the shortest edge to `image_size`
      (bicubic), center-crops to `image_size`, and normalizes with CLIP's mean and std.
    - `"minigpt4"`: MiniGPT-4's `Blip2ImageEvalProcessor`. Resizes to `image_size` x `image_size` (bicubic, no crop,
      aspect ratio not kept) and normalizes with CLIP's mean and std.
    """
    image_mean = list(OPENAI_CLIP_MEAN if image_mean is None else image_mean)
    image_std = list(OPENAI_CLIP_STD if image_std is None else image_std)
    if recipe == "llava-1.5":
        return _pil_image_processor_class("LlavaImageProcessor")(
            do_pad=True,
            do_resize=True,
            size={"shortest_edge": image_size},
            resample=PILImageResampling.BICUBIC,
            do_center_crop=True,
            crop_size={"height": image_size, "width": image_size},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=True,
        )
    if recipe == "minigpt4":
        return _pil_image_processor_class("BlipImageProcessor")(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BICUBIC,
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=image_mean,
            image_std=image_std,
            do_convert_rgb=True,
        )
    raise ValueError(
        f"Unknown image processor recipe {recipe!r}; the recipes are: {', '.join(IMAGE_PROCESSOR_RECIPES)}."
    )


__all__ = ["IMAGE_PROCESSOR_RECIPES", "make_image_processor"]
