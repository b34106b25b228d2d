"""transformers' own model test suite (`ModelTesterMixin`, `ConfigTester`) over both minillava architectures.

A tester class per architecture builds tiny configs and inputs the way transformers' LLaVA test does; the mixins come
from the installed transformers version's source distribution (see `transformers_suite.py`). Skipped here: what
transformers' own LLaVA test skips, for its reasons, and what the stand-ins leave out (`GenerationTesterMixin`).

`MINILLAVA_MIXIN_REFERENCE=1` adds the same harness over transformers' `LlavaForConditionalGeneration`, so that our
failure counts can be compared with llava's under the same installed version
(`MINILLAVA_MIXIN_REFERENCE=1 python -m pytest tests/test_transformers_mixins.py -q -rf`).
"""

import functools
import os
import unittest
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers_suite import Unavailable, load_mixins

from minillava.modeling import (
    MiniGPT4Config,
    MiniGPT4ForConditionalGeneration,
    MiniGPT4Model,
    MiniLlavaConfig,
    MiniLlavaForConditionalGeneration,
    MiniLlavaModel,
)


try:
    modeling_common, configuration_common = load_mixins()
except (Unavailable, ImportError) as error:
    pytest.skip(
        f"transformers' model test mixins are not available for this transformers version: {error}",
        allow_module_level=True,
    )

ModelTesterMixin = modeling_common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor = modeling_common.floats_tensor, modeling_common.ids_tensor

TEXT_CONFIG = {
    "model_type": "llama",
    "vocab_size": 99,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "initializer_range": 0.02,
    "pad_token_id": 1,
}
VISION_LAYERS = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32, "intermediate_size": 37}
IMAGE_TOKEN_ID = 0


CLIP_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "image_size": 8,
    "patch_size": 2,
    "projection_dim": 32,
    **VISION_LAYERS,
}
BLIP2_VISION_CONFIG = {"image_size": 8, "patch_size": 2, **VISION_LAYERS}
LLAVA_IMAGE_TOKENS = (8 // 2) ** 2  # patches, CLS dropped
MINIGPT4_QUERIES = 4


class VisionTextModelTester:
    """Tiny config and inputs: `batch_size` images, each expanded to `num_image_tokens` tokens at the start;
    `make_config(tester)` builds the architecture's config from the tester's sub-configs."""

    def __init__(
        self,
        parent,
        vision_config: dict,
        num_image_tokens: int,
        make_config,
        batch_size: int = 3,
        text_length: int = 7,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.is_training = True
        self.text_config = dict(TEXT_CONFIG)
        self.vision_config = dict(vision_config)
        self.num_image_tokens = num_image_tokens
        self.make_config = make_config
        self.pad_token_id = self.text_config["pad_token_id"]
        self.num_hidden_layers = self.text_config["num_hidden_layers"]
        self.vocab_size = self.text_config["vocab_size"]
        self.hidden_size = self.text_config["hidden_size"]
        self.num_attention_heads = self.text_config["num_attention_heads"]
        self.seq_length = text_length + num_image_tokens
        self.encoder_seq_length = self.seq_length

    def get_config(self):
        return self.make_config(self)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        size = self.vision_config["image_size"]
        pixel_values = floats_tensor([self.batch_size, 3, size, size])
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 2) + 2
        input_ids[:, : self.num_image_tokens] = IMAGE_TOKEN_ID
        attention_mask = torch.ones(input_ids.shape, dtype=torch.long)
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}


def llava_shaped_config(config_class, image_token_argument: str):
    """The config builder of a LLaVA-1.5-shaped class (ours, and transformers' llava, which names the token
    `image_token_index`)."""

    def make_config(tester: VisionTextModelTester):
        return config_class(
            vision_config=tester.vision_config,
            text_config=tester.text_config,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_seq_length=tester.num_image_tokens,
            **{image_token_argument: IMAGE_TOKEN_ID},
        )

    return make_config


def minigpt4_config(tester: VisionTextModelTester) -> MiniGPT4Config:
    return MiniGPT4Config(
        vision_config=tester.vision_config,
        qformer_config={**VISION_LAYERS, "vocab_size": 99, "cross_attention_frequency": 1},
        text_config=tester.text_config,
        num_query_tokens=tester.num_image_tokens,
        image_token_id=IMAGE_TOKEN_ID,
    )


class VisionTextModelTest(ModelTesterMixin):
    """What the architectures share; the subclasses name their classes and tester."""

    _is_composite = True
    # as transformers' LLaVA test (4.57's mixins read these; 5.x dropped head pruning and masking)
    test_pruning = False
    test_head_masking = False
    model_tester_factory = None
    config_class = None
    common_properties = ["image_token_id", "image_seq_length"]

    @classmethod
    def setUpClass(cls):
        """The mixins tell a base model from a head model by its class name in transformers' static mappings (where
        in-library models are listed); ours are listed there for the duration of the class."""
        base_class, head_class = cls.all_model_classes
        model_type = cls.config_class.model_type
        for names, class_name in (
            (modeling_auto.MODEL_MAPPING_NAMES, base_class.__name__),
            (modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, head_class.__name__),
        ):
            patcher = mock.patch.dict(names, {model_type: class_name})
            patcher.start()
            cls.addClassCleanup(patcher.stop)

    def setUp(self):
        self.model_tester = self.model_tester_factory(self)
        self.config_tester = ConfigTester(
            self, config_class=self.config_class, has_text_modality=False, common_properties=self.common_properties
        )

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(
        reason="GenerationTesterMixin is not in transformers' sdist; tests/test_generation.py covers generate"
    )
    def test_generation_tester_mixin_inheritance(self):
        pass

    @unittest.skipIf(
        transformers.__version__.startswith("4."),
        "4.57's version of this test finds the towers through `model.vision_tower` / `model.language_model` on the "
        "head model, shortcuts that llava had in 4.x and transformers 5 removed (#42156); ours live on `model.model`",
    )
    def test_sdpa_can_dispatch_composite_models(self):
        super().test_sdpa_can_dispatch_composite_models()

    @unittest.skip(
        reason="as transformers' LLaVA test: VLMs need many steps to build pad-free inputs; tested as part of the LLM test"
    )
    def test_flash_attention_2_padding_matches_padding_free_with_position_ids(self):
        pass


class LlavaShapedModelTest(VisionTextModelTest):
    """transformers' LLaVA test skips the gradient checkpointing tests ("This architecture seems to not compute
    gradients properly when using GC", transformers PR #27124); under this harness they fail for llava as for us,
    because the vision layers after `vision_feature_layer=-2` take no part in the loss."""

    @unittest.skip(reason="as transformers' LLaVA test: no gradient for the vision layers after the feature layer")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason="as transformers' LLaVA test: no gradient for the vision layers after the feature layer")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason="as transformers' LLaVA test: no gradient for the vision layers after the feature layer")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass

    @unittest.skip(reason="as transformers' LLaVA test: no gradient for the vision layers after the feature layer")
    def test_training_gradient_checkpointing_use_reentrant(self):  # 4.57's name of the test above
        pass


class MiniLlavaForConditionalGenerationModelTest(LlavaShapedModelTest, unittest.TestCase):
    all_model_classes = (MiniLlavaModel, MiniLlavaForConditionalGeneration)
    model_tester_factory = functools.partial(
        VisionTextModelTester,
        vision_config=CLIP_VISION_CONFIG,
        num_image_tokens=LLAVA_IMAGE_TOKENS,
        make_config=llava_shaped_config(MiniLlavaConfig, "image_token_id"),
    )
    config_class = MiniLlavaConfig
    common_properties = [*VisionTextModelTest.common_properties, "vision_feature_layer"]


class MiniGPT4ForConditionalGenerationModelTest(VisionTextModelTest, unittest.TestCase):
    all_model_classes = (MiniGPT4Model, MiniGPT4ForConditionalGeneration)
    model_tester_factory = functools.partial(
        VisionTextModelTester,
        vision_config=BLIP2_VISION_CONFIG,
        num_image_tokens=MINIGPT4_QUERIES,
        make_config=minigpt4_config,
    )
    config_class = MiniGPT4Config
    common_properties = [*VisionTextModelTest.common_properties, "num_query_tokens"]


if os.environ.get("MINILLAVA_MIXIN_REFERENCE") == "1":
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel

    class LlavaReferenceModelTest(LlavaShapedModelTest, unittest.TestCase):
        """transformers' own LLaVA under the same harness and the same skips: the count to compare with."""

        all_model_classes = (LlavaModel, LlavaForConditionalGeneration)
        model_tester_factory = functools.partial(
            VisionTextModelTester,
            vision_config=CLIP_VISION_CONFIG,
            num_image_tokens=LLAVA_IMAGE_TOKENS,
            make_config=llava_shaped_config(LlavaConfig, "image_token_index"),
        )
        config_class = LlavaConfig
        common_properties = ["image_token_index", "image_seq_length", "vision_feature_layer"]
