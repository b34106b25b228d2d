"""The offline demo's synthetic world and its small pretrained components (CPU, no downloads, well under 30 s)."""

import json
import re

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2ForConditionalGeneration, CLIPVisionModel

from minillava.train.demo import components
from minillava.train.demo import world as demo_world
from minillava.train.demo.world import (
    ANSWERS,
    HELD_OUT_PAIRS,
    RESPONSE_FORMAT_PROMPT,
    caption_samples,
    evaluation_samples,
    make_scenes,
    vqa_samples,
    write_llava_json,
)


CHANCE = {"colour": 1 / 6, "shape": 1 / 5, "count": 1 / 3, "position": 1 / 5}


def texts(sample):
    return [
        (message["role"], part["text"])
        for message in sample["messages"]
        for part in message["content"]
        if "text" in part
    ]


def pixels(samples):
    return [sample["images"][0].tobytes() for sample in samples]


def words(text):
    return re.findall(r"\w+|[^\w\s]", text)


def test_same_seed_gives_the_same_world():
    first, again, other = vqa_samples(8, seed=3), vqa_samples(8, seed=3), vqa_samples(8, seed=4)
    assert [texts(s) for s in first] == [texts(s) for s in again]
    assert pixels(first) == pixels(again)
    assert pixels(first) != pixels(other)
    assert [texts(s) for s in caption_samples(5, seed=3)] == [texts(s) for s in caption_samples(5, seed=3)]
    assert make_scenes(3, "test", seed=1) == make_scenes(10, "test", seed=1)[:3]  # a scene does not depend on n


def test_heldout_split_is_disjoint_from_train():
    train, test = make_scenes(400, "train"), make_scenes(200, "test")
    assert not any(scene.novel for scene in train)
    assert {(s.shape, s.colour) for s in train} == set(demo_world.TRAIN_PAIRS)
    assert 0.3 < sum(scene.novel for scene in test) / len(test) < 0.7
    assert {(s.shape, s.colour) for s in test if s.novel} == set(HELD_OUT_PAIRS)
    assert not {s.render().tobytes() for s in train} & {s.render().tobytes() for s in test}
    assert not set(train) & set(test)
    with pytest.raises(ValueError, match="split"):
        make_scenes(1, "val")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_answer_and_word_is_in_the_closed_vocabulary(split):
    vocabulary, sentences = set(demo_world.vocabulary()), set(demo_world.world_sentences())
    samples = vqa_samples(60, split) + vqa_samples(10, split, multi_turn=True) + caption_samples(60, split)
    kinds = set()
    for sample in samples:
        for role, text in texts(sample):
            assert set(words(text)) <= vocabulary, text
            assert text in sentences
            if role == "assistant" and text in ANSWERS:
                kinds.add(demo_world.answer_kind(text))
    assert kinds == {"colour", "shape", "count", "position"}
    for sample in vqa_samples(60, split):
        (_, question), (_, answer) = texts(sample)
        assert question.endswith("\n" + RESPONSE_FORMAT_PROMPT)
        assert answer in ANSWERS


def test_message_format():
    sample = vqa_samples(1)[0]
    user, assistant = sample["messages"]
    assert user["role"] == "user" and [part["type"] for part in user["content"]] == ["image", "text"]
    assert assistant == {"role": "assistant", "content": [{"type": "text", "text": assistant["content"][0]["text"]}]}
    assert isinstance(sample["images"][0], Image.Image) and sample["images"][0].size == (48, 48)
    conversation = vqa_samples(1, multi_turn=True)[0]["messages"]
    assert [m["role"] for m in conversation] == ["user", "assistant"] * (len(conversation) // 2)
    assert sum(part["type"] == "image" for m in conversation for part in m["content"]) == 1
    assert caption_samples(1, image_size=32)[0]["images"][0].size == (32, 32)


def test_write_llava_json(tmp_path):
    samples = vqa_samples(3, seed=0) + vqa_samples(2, seed=1, multi_turn=True) + caption_samples(2, seed=2)
    json_path, image_folder = demo_world.write_llava_json(samples, tmp_path, name="mix")
    records = json.loads(json_path.read_text())
    assert len(records) == len(samples) and len({r["id"] for r in records}) == len(records)
    assert len(list(image_folder.glob("*.png"))) == 3 + 2 + 2  # the questions of one image share its file
    for record, sample in zip(records, samples, strict=True):
        assert Image.open(image_folder / record["image"]).tobytes() == sample["images"][0].tobytes()
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert [t["value"].removeprefix("<image>\n") for t in turns] == [text for _, text in texts(sample)]


def test_evaluation_samples_carry_their_question_type_into_llava_json(tmp_path):
    samples = evaluation_samples(10)
    assert {sample["type"] for sample in samples} == {"colour", "shape", "count", "position"}
    for sample in samples:
        answer = sample["messages"][1]["content"][0]["text"]
        assert answer in ANSWERS and demo_world.answer_kind(answer) == sample["type"]
        assert sample["messages"][0]["content"][1]["text"].endswith(RESPONSE_FORMAT_PROMPT)
    json_path, _ = write_llava_json(samples, tmp_path, name="eval")
    records = json.loads(json_path.read_text())
    assert [record["type"] for record in records] == [sample["type"] for sample in samples]
    assert demo_world.normalize_answer(" Red.") == "red" and demo_world.normalize_answer("2 circles") == "two"


def test_tokenizer_round_trips_every_world_sentence():
    tokenizer = components.build_tokenizer()
    assert 300 <= len(tokenizer) <= 600
    templates = [
        components.VICUNA_SYSTEM_PROMPT,
        components.MINIGPT4_SYSTEM_PROMPT,
        "USER: ASSISTANT: ###Human: ###Assistant: <Img></Img>",
    ]
    for text in [*demo_world.world_sentences(), *templates]:
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("café ☃", add_special_tokens=False).input_ids  # byte-level: anything encodes
    for answer in ANSWERS:  # as generated after "ASSISTANT:" or "###Assistant:"
        assert len(tokenizer(" " + answer, add_special_tokens=False).input_ids) == 1


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A components cache built with small schedules (the quality of the CLIP build is still checked below)."""
    cache = tmp_path_factory.mktemp("components")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(components._SCHEDULES, ("vision", True), components._Schedule(120, 64, 1500, 4e-3))
        patch.setitem(components._SCHEDULES, ("lm", True), components._Schedule(5, 4, 100, 5e-3))
        patch.setitem(components._PROBE_IMAGES, True, (300, 150))
        components.tiny_clip_vision(cache, quick=True, verbose=False)
        patch.setitem(components._SCHEDULES, ("vision", True), components._Schedule(3, 8, 50, 4e-3))
        paths = components.build_all(cache, quick=True, verbose=False)
    return paths


def test_small_clip_build_beats_chance_on_held_out_probes(cache):
    probe = components.probe_vision_features(cache["clip_vision"], num_train=300, num_test=150)
    for name, chance in CHANCE.items():
        assert probe[f"probe_{name}"] > chance + 0.25, probe
    info = json.loads((cache["clip_vision"] / components.BUILD_INFO_NAME).read_text())
    assert info["metrics"]["probe_position"] > info["metrics"]["random_init_probe_position"] + 0.2, info


def test_component_folders(cache):
    for path in cache.values():
        assert path.name.endswith(f"-{components.COMPONENTS_VERSION}-quick")
        assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
        assert (path / components.BUILD_INFO_NAME).is_file()
        assert not list(path.parent.glob("*.tmp-*"))
    with safe_open(cache["clip_vision"] / "model.safetensors", "pt") as weights:  # loads on transformers 4 and 5
        assert all(key.startswith("vision_model.") for key in weights.keys())
    clip = CLIPVisionModel.from_pretrained(cache["clip_vision"])
    assert (clip.config.image_size, clip.config.patch_size) == (48, 8)
    preprocessor = json.loads((cache["clip_vision"] / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "CLIPImageProcessor" and preprocessor["crop_size"]["height"] == 48

    with safe_open(cache["blip2"] / "model.safetensors", "pt") as weights:
        prefixes = {key.split(".")[0] for key in weights.keys()}
        assert weights.get_slice("query_tokens").get_shape() == [1, components.NUM_QUERY_TOKENS, 64]
    assert prefixes == {"vision_model", "qformer", "query_tokens", "language_projection", "language_model"}
    blip2 = Blip2ForConditionalGeneration.from_pretrained(cache["blip2"])
    assert blip2.config.qformer_config.cross_attention_frequency == 1 and blip2.config.text_config.model_type == "opt"
    assert json.loads((cache["blip2"] / "preprocessor_config.json").read_text())["size"] == {"height": 48, "width": 48}

    tokenizer, lm = AutoTokenizer.from_pretrained(cache["lm"]), AutoModelForCausalLM.from_pretrained(cache["lm"])
    assert lm.config.model_type == "llama" and lm.config.vocab_size == len(tokenizer)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>",
        "</s>",
        "<pad>",
        "<unk>",
    )
    assert (
        json.loads((cache["lm"] / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    )
    with torch.no_grad():
        assert lm(**tokenizer("a red circle", return_tensors="pt")).logits.shape[-1] == len(tokenizer)


def test_components_are_cached_not_rebuilt(cache, monkeypatch):
    monkeypatch.setattr(components, "_build_context", None)  # any rebuild would fail
    assert components.build_all(cache["lm"].parent, quick=True, verbose=False) == cache
    monkeypatch.setenv(components.CACHE_ENV, str(cache["lm"].parent))
    assert components.tiny_blip2(quick=True, verbose=False) == cache["blip2"]
