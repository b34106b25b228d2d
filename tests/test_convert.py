"""`minillava convert` on tiny random checkpoints written in every source layout (no download): llava-hf both ways,
original LLaVA-1.5 (full `.bin` shards, stage-1 `mm_projector.bin`, LoRA output) and MiniGPT-4 (`llama_proj` `.pth`
with a LAVIS or a transformers BLIP-2). Each parity is checked against transformers' own classes; the exported
llava-hf folder is also loaded under transformers 4.57 when MINILLAVA_PY457 names such a Python (see .ci/run)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import (
    LLAVA_HF_CHAT_TEMPLATE,
    clip_vision_config,
    llama_config,
    make_image,
    save_llava_hf,
    save_parts,
    tiny_llava,
    tiny_minigpt4,
)
from torch.nn import functional as F
from transformers import (
    AutoProcessor,
    Blip2Model,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from minillava.modeling import MiniGPT4ForConditionalGeneration, MiniLlavaForConditionalGeneration
from minillava.processing import MiniLlavaProcessor, get_chat_template, make_image_processor
from minillava.train.conversion import (
    convert_from_llava,
    convert_from_llava_hf,
    convert_from_minigpt4,
    convert_to_llava_hf,
    main,
)
from minillava.train.training.build import save


try:  # transformers 5 names the PIL back ends explicitly (the default ones need torchvision)
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x
    from transformers import CLIPImageProcessor


SCRIPT = Path(__file__).parent / "scripts" / "load_llava_hf.py"
LOADER = importlib.util.module_from_spec(importlib.util.spec_from_file_location("load_llava_hf", SCRIPT))
LOADER.__spec__.loader.exec_module(LOADER)
PY457 = os.environ.get("MINILLAVA_PY457")
LOGITS_TOL = 1e-4
QFORMER_TOL = 1e-5
VOCAB = 320  # the tiny tokenizer without image token; `<image>` is added as id 320
IMAGE_TOKENS = 16  # 16x16 pixels, 4x4 patches, CLS dropped
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
# transformers' convert_llava_weights_to_hf.py renaming, restated: substring replacements applied in this order.
TRANSFORMERS_LLAVA_RULES = (
    ("model.vision_tower.", ""),
    (".vision_resampler", ""),
    ("model.mm_projector", "multi_modal_projector"),
    ("model", "model.model"),
    ("vision_model.model", "vision_model"),
    ("lm_head", "language_model.lm_head"),
    ("model.model", "language_model.model"),
    ("multi_modal_projector.0", "multi_modal_projector.linear_1"),
    ("multi_modal_projector.2", "multi_modal_projector.linear_2"),
)


def assert_safetensors_only(folder: Path) -> None:
    names = [path.name for path in Path(folder).rglob("*") if path.is_file()]
    assert not [name for name in names if name.endswith((".bin", ".pth", ".pt", ".pkl"))], names
    assert any(name.endswith(".safetensors") for name in names)


def saved_keys(folder: Path) -> list[str]:
    keys = []
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as reader:
            keys += list(reader.keys())
    return sorted(keys)


def pixels(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def prompt_ids(image_token_id: int, num_image_tokens: int = IMAGE_TOKENS) -> torch.Tensor:
    return torch.tensor([[1, 40, 41, 42] + [image_token_id] * num_image_tokens + [50, 61, 72, 83, 94, 105]])


@torch.no_grad()
def logits_of(model, **inputs) -> torch.Tensor:
    return model(**inputs).logits


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def report(name: str, value: float) -> None:
    print(f"PARITY {name}: {value:.3g}")


# --------------------------------------------------------------------------------------------------------------------
# fixtures: the parts, and a llava-hf folder


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The tiny parts of tests/tiny.py, plus a whole CLIP checkpoint (vision and text towers) as LLaVA names it in
    `mm_vision_tower` (openai/clip-vit-large-patch14-336)."""
    paths = save_parts(tmp_path_factory.mktemp("parts"))
    folder = tmp_path_factory.mktemp("openai-clip")
    text_config = CLIPTextConfig(
        vocab_size=99, hidden_size=16, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(7)
    CLIPModel(
        CLIPConfig(text_config=text_config.to_dict(), vision_config=clip_vision_config().to_dict())
    ).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    paths["openai-clip"] = str(folder)
    return paths


@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory) -> Path:
    """A tiny random llava-hf folder, written by transformers' own save_pretrained, with its LlavaProcessor."""
    return save_llava_hf(tmp_path_factory.mktemp("llava-hf"))


def relayout(folder: Path, target: Path, prefixes: dict[str, str]) -> Path:
    """A copy of a llava-hf folder whose weight keys have their prefixes swapped."""
    shutil.copytree(folder, target)
    tensors = load_file(target / "model.safetensors")
    renamed = {}
    for key, value in tensors.items():
        for old, new in prefixes.items():
            if key.startswith(old) and not key.startswith(new):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    save_file(renamed, target / "model.safetensors", metadata={"format": "pt"})
    return target


LLAVA_HF_LAYOUTS = {
    # what transformers 5.x `save_pretrained` writes (checked below)
    "saved": {},
    # the Hub checkpoints and transformers 4.x: the same, with the CLIP tower's `vision_model.` level
    "hub": {"vision_tower.": "vision_tower.vision_model."},
    # llava-hf's in-memory names since transformers 4.52
    "current": {
        "language_model.model.": "model.language_model.",
        "language_model.lm_head.": "lm_head.",
        "vision_tower.": "model.vision_tower.",
        "multi_modal_projector.": "model.multi_modal_projector.",
    },
}


def test_transformers_saves_llava_in_the_legacy_layout(llava_hf):
    keys = saved_keys(llava_hf)
    assert {key.split(".")[0] for key in keys} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert "language_model.lm_head.weight" in keys and "language_model.model.embed_tokens.weight" in keys
    # transformers 5.x drops the CLIP tower's `vision_model.` level that 4.x and the Hub checkpoints have
    assert any(key.startswith("vision_tower.embeddings.") for key in keys)


# --------------------------------------------------------------------------------------------------------------------
# llava-hf <-> minillava


@pytest.mark.parametrize("layout", sorted(LLAVA_HF_LAYOUTS))
def test_from_llava_hf_same_inputs_and_logits(llava_hf, layout, tmp_path):
    source = relayout(llava_hf, tmp_path / "source", LLAVA_HF_LAYOUTS[layout])
    out = tmp_path / "minillava"
    convert_from_llava_hf(str(source), str(out), max_shard_size="100KB")
    assert_safetensors_only(out)
    assert (out / "model.safetensors.index.json").is_file(), "max_shard_size must shard the weights"

    llava_processor = AutoProcessor.from_pretrained(source)
    processor = MiniLlavaProcessor.from_pretrained(out)
    assert processor.chat_template == LLAVA_HF_CHAT_TEMPLATE
    image = make_image()
    prompt = processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    assert prompt == llava_processor.apply_chat_template(MESSAGES, add_generation_prompt=True)
    expected = llava_processor(images=[image], text=[prompt], return_tensors="pt")
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], expected["input_ids"])
    assert torch.equal(inputs["pixel_values"], expected["pixel_values"])
    chat = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi?"}]}]
    kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    assert torch.equal(
        processor.apply_chat_template(chat, **kwargs)["input_ids"],
        llava_processor.apply_chat_template(chat, **kwargs)["input_ids"],
    )

    reference = LlavaForConditionalGeneration.from_pretrained(source).eval()
    model = MiniLlavaForConditionalGeneration.from_pretrained(out).eval()
    diff = max_diff(logits_of(model, **inputs), logits_of(reference, **expected))
    report(f"llava-hf ({layout}) -> minillava logits", diff)
    assert diff <= LOGITS_TOL


def load_llava_hf(folder: Path, workdir: Path, python: str | None = None) -> tuple[dict, dict]:
    """Loads an exported folder with transformers' LLaVA classes (tests/scripts/load_llava_hf.py): in this process,
    or with `python` in a process where minillava cannot be imported."""
    if python is None:
        return LOADER.compute(str(folder))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [python, str(SCRIPT), str(folder), str(workdir)], cwd=workdir, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((workdir / "result.json").read_text()), load_file(workdir / "out.safetensors")


def assert_native(folder: Path) -> None:
    """No code files and no auto_map: transformers loads the folder with its own classes only."""
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in config
    assert not list(folder.glob("*.py"))
    assert_safetensors_only(folder)


def test_round_trip_llava_hf_minillava_llava_hf(llava_hf, tmp_path):
    minillava, exported = tmp_path / "minillava", tmp_path / "llava-hf"
    main(["--from", "llava-hf", str(llava_hf), "--output-dir", str(minillava)])
    main(["--to", "llava-hf", str(minillava), "--output-dir", str(exported), "--max-shard-size", "100KB"])
    assert_native(exported)
    keys = saved_keys(exported)
    assert {key.split(".")[0] for key in keys} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert all(key.startswith("vision_tower.vision_model.") for key in keys if key.startswith("vision_tower."))
    assert keys == sorted(json.loads((exported / "model.safetensors.index.json").read_text())["weight_map"])

    result, outputs = load_llava_hf(exported, tmp_path)
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert result["processor_class"] == "LlavaProcessor"
    processor = AutoProcessor.from_pretrained(llava_hf)
    assert AutoProcessor.from_pretrained(exported).chat_template == LLAVA_HF_CHAT_TEMPLATE
    inputs = processor(images=[LOADER.test_image()], text=[result["prompt"]], return_tensors="pt")
    assert result["input_ids"] == inputs["input_ids"].tolist()
    reference = LlavaForConditionalGeneration.from_pretrained(llava_hf).eval()
    diff = max_diff(outputs["logits"], logits_of(reference, **inputs))
    report("llava-hf -> minillava -> llava-hf logits", diff)
    assert diff <= LOGITS_TOL


@pytest.fixture(scope="module", params=["clip-llama", "siglip-qwen2"])
def built(request, tmp_path_factory) -> tuple[Path, MiniLlavaForConditionalGeneration, MiniLlavaProcessor]:
    """A minillava LLaVA-1.5 folder saved by `build.save`, with its model and processor."""
    vision, text = request.param.split("-")
    model, tokenizer = tiny_llava(vision=vision, text=text)
    processor = MiniLlavaProcessor(
        image_processor=make_image_processor("llava-1.5", 16),
        tokenizer=tokenizer,
        chat_template=get_chat_template("vicuna_v1"),
        num_image_tokens=model.config.image_seq_length,
    )
    folder = tmp_path_factory.mktemp(request.param)
    save(model, processor, folder)
    return folder, model, processor


@pytest.mark.parametrize("python", ["transformers5", "transformers4.57"])
def test_export_loads_natively_with_same_logits(built, python, tmp_path):
    folder, model, processor = built
    if python == "transformers4.57" and PY457 is None:
        pytest.skip("MINILLAVA_PY457 is not set: no transformers 4.57 environment to test against")
    exported = tmp_path / "llava-hf"
    convert_to_llava_hf(str(folder), str(exported))
    assert_native(exported)
    result, outputs = load_llava_hf(exported, tmp_path, python=None if python == "transformers5" else PY457)
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert result["processor_class"] == "LlavaProcessor"
    assert result["prompt"] == processor.apply_chat_template(LOADER.MESSAGES, add_generation_prompt=True)
    inputs = processor(images=[LOADER.test_image()], text=[result["prompt"]], return_tensors="pt")
    assert result["input_ids"] == inputs["input_ids"].tolist()
    assert torch.equal(outputs["pixel_values"], inputs["pixel_values"])
    diff = max_diff(outputs["logits"], logits_of(model, **inputs))
    report(f"minillava ({model.config.vision_config.model_type}) -> llava-hf logits under {python}", diff)
    assert diff <= LOGITS_TOL


def test_minigpt4_export_is_refused_with_the_reason(tmp_path):
    model, tokenizer = tiny_minigpt4()
    processor = MiniLlavaProcessor(
        image_processor=make_image_processor("minigpt4", 16),
        tokenizer=tokenizer,
        chat_template=get_chat_template("minigpt4_vicuna0"),
        num_image_tokens=model.config.image_seq_length,
    )
    save(model, processor, tmp_path / "minigpt4")
    with pytest.raises(ValueError, match="MiniGPT-4 model, which has no native transformers equivalent.*Q-Former"):
        convert_to_llava_hf(str(tmp_path / "minigpt4"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_incomplete_llava_hf_layout_is_refused_with_both_key_lists(llava_hf, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(llava_hf, source)
    tensors = load_file(source / "model.safetensors")
    tensors["multi_modal_projector.linear_3.weight"] = tensors.pop("multi_modal_projector.linear_2.bias")
    save_file(tensors, source / "model.safetensors")
    with pytest.raises(ValueError) as error:
        convert_from_llava_hf(str(source), str(tmp_path / "out"))
    message = str(error.value)
    assert re.search(r"missing keys \[[^\]]*'model\.multi_modal_projector\.linear_2\.bias'", message), message
    assert re.search(r"unexpected keys \[[^\]]*'model\.multi_modal_projector\.linear_3\.weight'", message), message


# --------------------------------------------------------------------------------------------------------------------
# original LLaVA-1.5: references converted with transformers' own rules


def original_config(parts: dict, **overrides) -> dict:
    """An original LLaVA-1.5 config.json around the tiny Llama (model_type "llava", as before LLaVA v1.2)."""
    config = json.loads((Path(parts["llama"]) / "config.json").read_text())
    config.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava",
        mm_vision_tower=parts["openai-clip"],
        mm_hidden_size=32,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_use_im_start_end=False,
        mm_use_im_patch_token=False,
        image_aspect_ratio="pad",
        use_mm_proj=True,
        tune_mm_mlp_adapter=False,
        freeze_mm_mlp_adapter=False,
    )
    config.update(overrides)
    return config


def random_projector(seed: int, prefix: str = "model.mm_projector.") -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        f"{prefix}{name}": torch.randn(shape, generator=generator) * 0.2
        for name, shape in (("0.weight", (32, 32)), ("0.bias", (32,)), ("2.weight", (32, 32)), ("2.bias", (32,)))
    }


def original_tower(parts: dict) -> dict[str, torch.Tensor]:
    """The CLIP tower as LLaVA's `CLIPVisionTower` holds it (after `load_model()`)."""
    tower = CLIPModel.from_pretrained(parts["openai-clip"]).vision_model
    return {
        "model.vision_tower.vision_tower.vision_model." + key.removeprefix("vision_model."): value
        for key, value in tower.state_dict().items()
    }


def llava_hf_reference(original_state: dict, folder: Path) -> LlavaForConditionalGeneration:
    """The original weights converted as transformers' convert_llava_weights_to_hf.py does (<image> then <pad>
    added, vocabulary padded to a multiple of 64)."""
    state = {}
    for key, value in original_state.items():
        if key.endswith(".inv_freq"):
            continue
        for old, new in TRANSFORMERS_LLAVA_RULES:
            key = key.replace(old, new)
        state[key] = value.contiguous()
    config = LlavaConfig(
        vision_config=clip_vision_config().to_dict(),
        text_config=llama_config(VOCAB).to_dict(),
        image_token_index=VOCAB,
        image_seq_length=IMAGE_TOKENS,
    )
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    model, info = LlavaForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.resize_token_embeddings(VOCAB + 2, pad_to_multiple_of=64)
    return model.eval()


def check_against_reference(out: Path, reference: LlavaForConditionalGeneration, name: str) -> None:
    """Same logits over the original vocabulary (the added rows are random in both conversions)."""
    assert_safetensors_only(out)
    model = MiniLlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = MiniLlavaProcessor.from_pretrained(out)
    assert processor.image_token_id == model.config.image_token_id == VOCAB
    ids, pixel_values = prompt_ids(VOCAB), pixels()
    diff = max_diff(
        logits_of(model, input_ids=ids, pixel_values=pixel_values)[..., :VOCAB],
        logits_of(reference, input_ids=ids, pixel_values=pixel_values)[..., :VOCAB],
    )
    report(f"{name} -> minillava vs llava-hf conversion, logits", diff)
    assert diff <= LOGITS_TOL


def write_bin_shards(state: dict[str, torch.Tensor], folder: Path, shards: int = 2) -> None:
    """`pytorch_model-0000i-of-0000n.bin` shards and their index, as LLaVA's releases have them."""
    keys, weight_map = sorted(state), {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        chunk = {key: state[key] for key in keys[index::shards]}
        torch.save(chunk, folder / name)
        weight_map.update(dict.fromkeys(chunk, name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def copy_tokenizer(parts: dict, folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(parts["llama"]) / name, folder / name)


@pytest.fixture(scope="module")
def llama_state(parts) -> dict[str, torch.Tensor]:
    return load_file(Path(parts["llama"]) / "model.safetensors")


def test_original_llava_full_checkpoint(parts, llama_state, tmp_path):
    source = tmp_path / "llava-v1.5"
    source.mkdir()
    state = {**llama_state, **random_projector(1)}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # saved by transformers < 4.32
    write_bin_shards(state, source)
    (source / "config.json").write_text(json.dumps(original_config(parts)))
    copy_tokenizer(parts, source)

    out = tmp_path / "out"
    main(["--from", "llava", str(source), "--output-dir", str(out)])
    reference = llava_hf_reference({**state, **original_tower(parts)}, tmp_path / "reference")
    check_against_reference(out, reference, "original LLaVA (.bin shards)")

    processor = MiniLlavaProcessor.from_pretrained(out)
    assert processor.chat_template == get_chat_template("vicuna_v1")
    config = json.loads((out / "config.json").read_text())
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    # image_aspect_ratio "pad": LLaVA's expand2square with the mean colour, then CLIP's resize and crop
    image = make_image(size=(40, 24))
    mean = processor.image_processor.image_mean
    square = Image.new("RGB", (40, 40), tuple(int(x * 255) for x in mean))
    square.paste(image, (0, 8))
    clip = CLIPImageProcessor(
        size={"shortest_edge": 16},
        crop_size={"height": 16, "width": 16},
        image_mean=mean,
        image_std=processor.image_processor.image_std,
    )
    expected = clip(square, return_tensors="pt")["pixel_values"]
    assert torch.allclose(processor.image_processor(image, return_tensors="pt")["pixel_values"], expected, atol=1e-6)


def test_original_llava_checkpoint_with_unknown_keys_is_refused(parts, llama_state, tmp_path):
    source = tmp_path / "llava"
    source.mkdir()
    projector = random_projector(1)
    del projector["model.mm_projector.2.bias"]
    write_bin_shards({**llama_state, **projector, "model.image_newline": torch.zeros(32)}, source, shards=1)
    (source / "config.json").write_text(json.dumps(original_config(parts)))
    copy_tokenizer(parts, source)
    with pytest.raises(ValueError) as error:
        convert_from_llava(str(source), str(tmp_path / "out"))
    message = str(error.value)
    assert re.search(r"missing keys \['model\.multi_modal_projector\.linear_2\.bias'\]", message), message
    assert re.search(r"unexpected keys \['model\.language_model\.image_newline'\]", message), message


def test_original_llava_recognised_by_architectures_not_model_type(parts, llava_hf, tmp_path):
    with pytest.raises(ValueError, match="not an original LLaVA checkpoint.*--from llava-hf"):
        convert_from_llava(str(llava_hf), str(tmp_path / "out"))
    source = tmp_path / "next"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(original_config(parts)))  # model_type "llava", as llava-hf's
    with pytest.raises(ValueError, match="original LLaVA checkpoint.*use --from llava"):
        convert_from_llava_hf(str(source), str(tmp_path / "out"))
    config = original_config(parts, image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad")
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a LLaVA-1.5 style checkpoint.*any-resolution"):
        convert_from_llava(str(source), str(tmp_path / "out"))


def test_stage1_projector_applied_to_base_lm(parts, llama_state, tmp_path):
    pretrain = tmp_path / "llava-v1.5-pretrain"
    pretrain.mkdir()
    projector = random_projector(2)
    torch.save(projector, pretrain / "mm_projector.bin")
    (pretrain / "config.json").write_text(json.dumps(original_config(parts, image_aspect_ratio="square")))

    out = tmp_path / "out"
    main(
        [
            "--from",
            "llava",
            parts["llama"],
            "--mm-projector",
            str(pretrain / "mm_projector.bin"),
            "--output-dir",
            str(out),
        ]
    )
    reference = llava_hf_reference({**llama_state, **projector, **original_tower(parts)}, tmp_path / "reference")
    check_against_reference(out, reference, "stage-1 mm_projector.bin + base LM")
    assert MiniLlavaProcessor.from_pretrained(out).image_processor.do_pad, "stage 2 of LLaVA-1.5 pads to squares"


def test_lora_output_merged_into_base(parts, llama_state, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = tmp_path / "llava-v1.5-lora"
    torch.manual_seed(3)
    peft_model = get_peft_model(
        LlamaForCausalLM.from_pretrained(parts["llama"]),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    peft_model.save_pretrained(lora, safe_serialization=False)  # adapter_model.bin, as LLaVA's older runs
    projector = random_projector(4)
    torch.save(
        {key.replace("model.", "base_model.model.model.", 1): value for key, value in projector.items()},
        lora / "non_lora_trainables.bin",
    )
    (lora / "config.json").write_text(json.dumps(original_config(parts)))

    with pytest.raises(ValueError, match="LoRA output: pass --base-model"):
        convert_from_llava(str(lora), str(tmp_path / "out"))
    out = tmp_path / "out"
    main(["--from", "llava", str(lora), "--base-model", parts["llama"], "--output-dir", str(out)])
    merged = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(parts["llama"]), lora).merge_and_unload()
    assert not torch.equal(
        merged.state_dict()["model.layers.0.self_attn.q_proj.weight"],
        llama_state["model.layers.0.self_attn.q_proj.weight"],
    )
    reference = llava_hf_reference(
        {**merged.state_dict(), **projector, **original_tower(parts)}, tmp_path / "reference"
    )
    check_against_reference(out, reference, "LoRA output + base LM")


# --------------------------------------------------------------------------------------------------------------------
# MiniGPT-4


@pytest.fixture(scope="module")
def blip2(parts, tmp_path_factory) -> tuple[Blip2Model, Path]:
    """transformers' Blip2Model (the reference) with non-zero q/v biases, saved as a transformers BLIP-2 folder."""
    reference = Blip2Model.from_pretrained(parts["blip2"]).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in reference.vision_model.encoder.layers:
            bias = layer.self_attn.qkv.bias
            third = bias.shape[0] // 3
            bias[:third] = torch.randn(third, generator=generator)
            bias[third : 2 * third] = 0.0  # EVA ViT has no key bias
            bias[2 * third :] = torch.randn(third, generator=generator)
    folder = tmp_path_factory.mktemp("blip2")
    reference.save_pretrained(folder)
    shutil.copy(Path(parts["blip2"]) / "preprocessor_config.json", folder)
    return reference, folder


# transformers' BLIP-2 vision names -> LAVIS's EVA ViT names (substrings)
LAVIS_VISION_NAMES = (
    ("embeddings.class_embedding", "cls_token"),
    ("embeddings.position_embedding", "pos_embed"),
    ("embeddings.patch_embedding.", "patch_embed.proj."),
    ("post_layernorm.", "ln_vision."),
    ("encoder.layers.", "blocks."),
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.projection.", "attn.proj."),
    ("self_attn.qkv.", "attn.qkv."),
)


def lavis_checkpoint(reference: Blip2Model, path: Path) -> None:
    """The reference's front end in the LAVIS key layout (`blip2_pretrained*.pth`), with the tensors LAVIS keeps
    that MiniGPT-4 does not use."""
    state = {"query_tokens": reference.query_tokens.detach().clone()}
    for key, value in reference.vision_model.state_dict().items():
        for old, new in LAVIS_VISION_NAMES:
            key = key.replace(old, new)
        key = key if key.startswith("ln_vision.") else "visual_encoder." + key
        if key.endswith("attn.qkv.bias"):
            third = value.shape[0] // 3
            state[key.replace("qkv.bias", "q_bias")] = value[:third].clone()
            state[key.replace("qkv.bias", "v_bias")] = value[2 * third :].clone()
        else:
            state[key] = value.clone()
    for key, value in reference.qformer.state_dict().items():
        key = key.replace("layernorm.", "embeddings.LayerNorm.").replace("attention.attention.", "attention.self.")
        state["Qformer.bert." + key] = value.clone()
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(32)[None]
    state["Qformer.bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(37, 32)
    state["t5_proj.weight"] = torch.zeros(8, 32)
    torch.save({"model": state}, path)


def minigpt4_checkpoint(path: Path, extra: dict | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(6)
    projection = {"llama_proj.weight": torch.randn(32, 32, generator=generator), "llama_proj.bias": torch.randn(32)}
    torch.save({"model": {**projection, **(extra or {})}}, path)
    return projection


def check_minigpt4_parity(out: Path, reference: Blip2Model, projection: dict, name: str) -> None:
    assert_safetensors_only(out)
    model = MiniGPT4ForConditionalGeneration.from_pretrained(out).eval()
    seen = {}
    hook = model.model.language_projection.register_forward_hook(
        lambda module, args, output: seen.update(qformer=args[0], projected=output)
    )
    with torch.no_grad():
        model.get_image_features(pixels())
        expected = reference.get_qformer_features(pixel_values=pixels())
    hook.remove()
    expected = getattr(expected, "last_hidden_state", expected)
    diff = max_diff(seen["qformer"], expected)
    report(f"MiniGPT-4 ({name}) Q-Former outputs vs Blip2Model.get_qformer_features", diff)
    assert diff <= QFORMER_TOL
    projected = F.linear(expected, projection["llama_proj.weight"], projection["llama_proj.bias"])
    diff = max_diff(seen["projected"], projected)
    report(f"MiniGPT-4 ({name}) projected features vs llama_proj", diff)
    assert diff <= QFORMER_TOL

    processor = MiniLlavaProcessor.from_pretrained(out)
    assert processor.chat_template == get_chat_template("minigpt4_vicuna0")
    assert processor.num_image_tokens == model.config.num_query_tokens == 4
    assert model.model.qformer.dtype == torch.float32


def test_minigpt4_with_lavis_blip2(parts, blip2, tmp_path):
    reference, blip2_folder = blip2
    lavis = tmp_path / "blip2_pretrained.pth"
    lavis_checkpoint(reference, lavis)
    checkpoint = tmp_path / "pretrained_minigpt4.pth"
    projection = minigpt4_checkpoint(checkpoint)
    out = tmp_path / "out"
    common = ["--from", "minigpt4", str(checkpoint), "--blip2", str(lavis), "--text-model", parts["llama"]]
    with pytest.raises(ValueError, match="head counts are unknown; pass --blip2-config"):
        main([*common, "--output-dir", str(out)])
    main([*common, "--blip2-config", str(blip2_folder), "--output-dir", str(out)])
    check_minigpt4_parity(out, reference, projection, "LAVIS BLIP-2")


def test_minigpt4_with_transformers_blip2(parts, blip2, tmp_path):
    reference, blip2_folder = blip2
    checkpoint = tmp_path / "pretrained_minigpt4.pth"
    projection = minigpt4_checkpoint(checkpoint)
    out = tmp_path / "out"
    convert_from_minigpt4(str(checkpoint), str(out), blip2=str(blip2_folder), text_model=parts["llama"])
    check_minigpt4_parity(out, reference, projection, "transformers BLIP-2")


def test_minigpt4_incomplete_or_foreign_checkpoints_are_refused(parts, blip2, tmp_path):
    reference, blip2_folder = blip2
    checkpoint = tmp_path / "minigpt4.pth"
    minigpt4_checkpoint(checkpoint, extra={"llama_model.lm_head.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"unexpected keys \['llama_model\.lm_head\.weight'\]"):
        convert_from_minigpt4(
            str(checkpoint), str(tmp_path / "out"), blip2=str(blip2_folder), text_model=parts["llama"]
        )

    lavis = tmp_path / "blip2_pretrained.pth"
    lavis_checkpoint(reference, lavis)
    state = torch.load(lavis, weights_only=True)
    del state["model"]["visual_encoder.blocks.1.mlp.fc2.weight"]
    torch.save(state, lavis)
    minigpt4_checkpoint(checkpoint)
    with pytest.raises(
        ValueError, match=r"missing keys \['model\.vision_tower\.encoder\.layers\.1\.mlp\.fc2\.weight'\]"
    ):
        convert_from_minigpt4(
            str(checkpoint),
            str(tmp_path / "out"),
            blip2=str(lavis),
            blip2_config=str(blip2_folder),
            text_model=parts["llama"],
        )


def test_cli_refuses_options_of_another_format(llava_hf, tmp_path):
    with pytest.raises(SystemExit):
        main(["--from", "llava-hf", str(llava_hf), "--output-dir", str(tmp_path), "--blip2", "x"])
    with pytest.raises(SystemExit):
        main(["--from", "minigpt4", "x.pth", "--output-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--to", "llava-hf", str(llava_hf), "--output-dir", str(llava_hf)])


def _push_folder(folder: str, repo_id: str) -> None:
    """Runs in a client process: uploads `folder` to the Hub at HF_ENDPOINT."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder)


def _convert_hub_id(repo_id: str, output_dir: str) -> list[str]:
    """Runs in a client process: converts a llava-hf repo by its Hub id; returns the files it downloaded."""
    from minillava.train.conversion import main

    main(["--from", "llava-hf", repo_id, "--output-dir", output_dir])
    return sorted(p.name for p in Path(os.environ["HF_HUB_CACHE"]).rglob("*") if p.is_file() and "blobs" not in str(p))


def test_hub_id_source_downloads_one_weight_format(llava_hf, tmp_path):
    from hub_server import run_client, serve_hub

    source = tmp_path / "source"
    shutil.copytree(llava_hf, source)
    torch.save({"unused": torch.zeros(1)}, source / "pytorch_model.bin")  # a repo that ships both formats
    local = tmp_path / "local"
    convert_from_llava_hf(str(llava_hf), str(local))
    with serve_hub(tmp_path / "hub") as endpoint:
        run_client(endpoint, tmp_path / "home", _push_folder, str(source), "testuser/llava-tiny")
        downloaded = run_client(
            endpoint, tmp_path / "home", _convert_hub_id, "testuser/llava-tiny", str(tmp_path / "out")
        )
    assert "model.safetensors" in downloaded and "pytorch_model.bin" not in downloaded
    assert_safetensors_only(tmp_path / "out")
    for name, tensor in load_file(local / "model.safetensors").items():
        torch.testing.assert_close(load_file(tmp_path / "out" / "model.safetensors")[name], tensor)
