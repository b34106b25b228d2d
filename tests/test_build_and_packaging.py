"""`minillava build`, the presets, and what installing the package puts into site-packages."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from tiny import save_parts
from transformers import AutoModelForImageTextToText, AutoProcessor

from minillava.train.training.build import BuildArguments, build, load_preset, resolve_preset


ROOT = Path(__file__).resolve().parents[1]
MINILLAVA = [sys.executable, "-m", "minillava.train.cli"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return save_parts(tmp_path_factory.mktemp("parts"))


def test_cli_build_then_auto_load_and_generate(parts, tmp_path):
    out = tmp_path / "model"
    proc = subprocess.run(
        [*MINILLAVA, "build", "--arch", "llava-1.5", "--vision_model", parts["clip"], "--text_model", parts["llama"],
         "--output_dir", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"to {out}" in proc.stdout
    model = AutoModelForImageTextToText.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.image_token_id == processor.image_token_id
    assert processor.num_image_tokens == model.config.image_seq_length == 16
    assert model.config.vision_feature_layer == -2 and model.config.vision_feature_select_strategy == "default"
    assert "A chat between a curious user" in processor.chat_template
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    from tiny import make_image

    inputs = processor(images=[make_image()], text=[processor.apply_chat_template(messages, add_generation_prompt=True)],
                       return_tensors="pt")  # fmt: skip
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_build_keeps_the_pretrained_weights(parts, tmp_path):
    from transformers import CLIPVisionModel, LlamaForCausalLM

    model, processor = build(
        BuildArguments(
            arch="llava-1.5", vision_model=parts["clip"], text_model=parts["llama"], output_dir=str(tmp_path)
        )
    )
    clip = CLIPVisionModel.from_pretrained(parts["clip"])
    llama = LlamaForCausalLM.from_pretrained(parts["llama"])
    for name, tensor in clip.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], tensor)
    old_vocab = llama.config.vocab_size
    embed = model.get_input_embeddings().weight
    torch.testing.assert_close(embed[:old_vocab], llama.get_input_embeddings().weight)
    assert embed.shape[0] == len(processor.tokenizer) == old_vocab + 1  # + <image>
    torch.testing.assert_close(model.lm_head.weight[:old_vocab], llama.lm_head.weight)


def test_build_minigpt4_takes_blip2_front_end(parts, tmp_path):
    from transformers import Blip2ForConditionalGeneration

    model, processor = build(
        BuildArguments(
            arch="minigpt4", vision_model=parts["blip2"], text_model=parts["llama"], output_dir=str(tmp_path)
        )
    )
    blip2 = Blip2ForConditionalGeneration.from_pretrained(parts["blip2"])
    torch.testing.assert_close(model.model.query_tokens, blip2.query_tokens)
    for name, tensor in blip2.qformer.state_dict().items():
        torch.testing.assert_close(model.model.qformer.state_dict()[name], tensor)
    assert processor.num_image_tokens == model.config.num_query_tokens == 4
    assert "###Human:" in processor.chat_template and "<Img>" in processor.chat_template


def test_minigpt4_refuses_a_non_blip2_vision_checkpoint(parts, tmp_path):
    with pytest.raises(ValueError, match="needs a BLIP-2 checkpoint"):
        build(
            BuildArguments(
                arch="minigpt4", vision_model=parts["clip"], text_model=parts["llama"], output_dir=str(tmp_path)
            )
        )


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError, match="available presets: .*llava-1.5-7b"):
        load_preset("llava-9b")


@pytest.mark.parametrize("name", ["llava-1.5-7b", "llava-1.5-13b", "minigpt4-vicuna-7b", "minigpt4-vicuna-13b"])
def test_published_presets_name_their_components(name):
    args = resolve_preset(BuildArguments(output_dir="unused", preset=name))
    assert args.arch in ("llava-1.5", "minigpt4")
    assert args.vision_model and args.text_model
    if args.arch == "llava-1.5":
        assert args.vision_model == "openai/clip-vit-large-patch14-336" and args.vision_feature_layer == -2


def test_explicit_arguments_override_the_preset():
    args = resolve_preset(BuildArguments(output_dir="unused", preset="llava-1.5-7b", text_model="my/lm"))
    assert args.text_model == "my/lm" and args.vision_model == "openai/clip-vit-large-patch14-336"


def test_wheel_installs_one_import_root(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = tmp_path.glob("minillava-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith("top_level.txt"))
        assert archive.read(top_level).decode().split() == ["minillava"]
    roots = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert roots == {"minillava"}
    assert "minillava/hub_configs/llava-1.5-7b.json" in names
    assert "minillava/modeling/modeling_minillava.py" in names
    assert "minillava/hub_configs/recipes/llava-1.5-align.yaml" in names


def test_code_never_imports_the_bare_folder_names():
    pattern = re.compile(r"^\s*(from|import)\s+(processing|train|modeling_minillava|hub_configs)\b", re.M)
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("modeling_minillava", "processing", "train", "tests")
        for path in (ROOT / folder).rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == []


def test_presets_are_valid_json_with_known_fields():
    known = set(BuildArguments.__dataclass_fields__)
    for path in (ROOT / "hub_configs").glob("*.json"):
        assert set(json.loads(path.read_text())) <= known, path.name
