"""Models built with `minillava build` from separately saved parts load where minillava is not installed, through the
Auto classes with `trust_remote_code=True`, on the installed (newest) transformers, the oldest 5.x we support and
4.57, from a folder and from the (local) Hub, and give the same outputs as in the project.

The other versions' checks run when MINILLAVA_PY457 / MINILLAVA_PY5_FLOOR name a Python with transformers 4.57 / the
oldest supported 5.x (CI sets them up; see .ci/run)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import TOKEN, USER, client_env, serve_hub
from PIL import Image
from safetensors.torch import load_file
from tiny import save_parts

from minillava.train.training.build import BuildArguments, build


SCRIPT = Path(__file__).parent / "scripts" / "load_remote.py"
PY457 = os.environ.get("MINILLAVA_PY457")
PY5_FLOOR = os.environ.get("MINILLAVA_PY5_FLOOR")
COMBOS = {
    "clip-llama": ("llava-1.5", "clip", "llama"),
    "siglip-qwen2": ("llava-1.5", "siglip", "qwen2"),
    "blip2-llama": ("minigpt4", "blip2", "llama"),
}
PYTHONS = {
    "transformers5": sys.executable,
    "transformers5-floor": PY5_FLOOR,
    "transformers4.57": PY457,
}
ENV_OF = {"transformers5-floor": "MINILLAVA_PY5_FLOOR", "transformers4.57": "MINILLAVA_PY457"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return save_parts(tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module", params=sorted(COMBOS))
def built(request, parts, tmp_path_factory):
    """A built folder and what the in-project model computes on the test prompt."""
    arch, vision, text = COMBOS[request.param]
    out = tmp_path_factory.mktemp(request.param)
    model, processor = build(
        BuildArguments(arch=arch, vision_model=parts[vision], text_model=parts[text], output_dir=str(out))
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    # what the pipeline answers: the decoded new tokens, cut at the template's turn separator (MiniGPT-4's `###`)
    answer = processor.post_process_image_text_to_text(generated[:, inputs["input_ids"].shape[1] :])[0]
    return out, {
        "input_ids": inputs["input_ids"].tolist(),
        "logits": logits,
        "generated": generated.tolist(),
        "answer": answer,
    }


def load_elsewhere(
    python: str, folder: Path | str, workdir: Path, resave: Path | None = None, env: dict | None = None
) -> dict:
    """Runs tests/scripts/load_remote.py with `python`, from a directory where minillava cannot be imported.
    `folder` is a path, or a repo id with `env` pointing at a Hub."""
    workdir.mkdir(parents=True, exist_ok=True)
    run_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run_env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"), TOKENIZERS_PARALLELISM="false")
    run_env.update(env or {})
    args = [python, str(SCRIPT), str(folder), str(workdir)] + ([str(resave)] if resave else [])
    proc = subprocess.run(args, cwd=workdir, env=run_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((workdir / "result.json").read_text())
    result["logits"] = load_file(workdir / "logits.safetensors")["logits"]
    result["stderr"] = proc.stderr
    return result


def python_for(name: str) -> str:
    if PYTHONS[name] is None:
        pytest.skip(f"{ENV_OF[name]} is not set: no {name} environment to test against")
    return PYTHONS[name]


def test_saved_folder_is_flat_safetensors_with_relative_imports(built):
    folder, _ = built
    assert not [p for p in folder.iterdir() if p.is_dir()], "code files must be flat for remote code"
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt*")) and not list(folder.glob("*.pkl"))
    assert list(folder.glob("*.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) >= {
        "AutoConfig",
        "AutoModelForImageTextToText",
        "AutoModelForVision2Seq",
        "AutoProcessor",
    }
    for module in {v.split(".")[0] for v in config["auto_map"].values()}:
        assert (folder / f"{module}.py").is_file()
    for code in folder.glob("*.py"):
        text = code.read_text()
        assert not re.search(r"^\s*(from|import)\s+(minillava|modeling_minillava|processing|train)\b", text, re.M)
        for sibling in re.findall(r"^\s*from\s+\.(\S+)\s+import", text, re.M):
            assert (folder / f"{sibling}.py").is_file(), f"{code.name} imports missing sibling {sibling}"


@pytest.mark.parametrize("python", sorted(PYTHONS))
def test_loads_without_minillava_with_same_outputs(built, python, tmp_path):
    folder, expected = built
    result = load_elsewhere(python_for(python), folder, tmp_path)
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert result["model_module"].startswith("transformers_modules"), "must run the folder's own code"
    assert result["input_ids"] == expected["input_ids"]
    assert (result["logits"] - expected["logits"]).abs().max() <= 1e-4
    assert result["generated"] == expected["generated"]
    assert result["pipeline_answer"] == expected["answer"]
    # lmms-eval's generic loader (`AutoModel` with remote code) gets the generating model and the same tokens
    assert result["generic_loader_class"].endswith("ForConditionalGeneration")
    assert result["generic_loader_generated"] == expected["generated"]


def test_folder_saved_under_457_loads_under_5_with_every_weight(built, tmp_path):
    folder, expected = built
    resaved = tmp_path / "resaved"
    load_elsewhere(python_for("transformers4.57"), folder, tmp_path / "457", resave=resaved)
    result = load_elsewhere(sys.executable, resaved, tmp_path / "5")
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert (result["logits"] - expected["logits"]).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with serve_hub(tmp_path_factory.mktemp("hub"), lfs=False) as endpoint:  # lfs=False: this process may use Xet
        yield endpoint


@pytest.mark.parametrize("python", sorted(PYTHONS))
def test_pushed_folder_loads_by_id_on_every_version(built, hub, python, tmp_path):
    """Pushed to the Hub (the local one) with the real client, loaded by id: same logits and greedy tokens on every
    supported transformers, and no deprecation warning from the folder's code on the newest."""
    from huggingface_hub import HfApi

    folder, expected = built
    repo_id = f"{USER}/{folder.name}"
    api = HfApi(endpoint=hub, token=TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder))
    env = client_env(hub, tmp_path / "hf-home")
    result = load_elsewhere(python_for(python), repo_id, tmp_path / "run", env=env)
    assert result["missing_keys"] == [] and result["unexpected_keys"] == []
    assert result["model_module"].startswith("transformers_modules")
    assert (result["logits"] - expected["logits"]).abs().max() <= 1e-4
    assert result["generated"] == expected["generated"]
    if python == "transformers5":
        warned = [line for line in result["stderr"].splitlines() if "deprecat" in line.lower()]
        assert warned == [], warned
