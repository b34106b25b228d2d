"""`minillava sft` on LLaVA conversation JSON + an image folder pushes to a Hub during and after training, and the
pushed repo loads by id with the Auto classes (without minillava) and gives the same logits as the local output.

The Hub is the local server of tests/hub_server.py; the clients run in fresh processes with HF_ENDPOINT pointing at it.
This module imports minillava only inside functions, so that its client functions can run where minillava is blocked.
"""

import sys

import pytest
import torch
from hub_server import TOKEN, USER, run_client, serve_hub
from safetensors.torch import load_file, save_file


REPO_ID = f"{USER}/tiny-llava-sft"


def sft_and_push(argv: list[str]) -> None:
    """Client process: `minillava sft ARGV...` (which pushes)."""
    from minillava.train.training.sft import main

    main(argv)


def load_by_id(repo_id: str, inputs_file: str, logits_file: str) -> dict:
    """Client process without minillava: loads `repo_id` with the Auto classes and computes logits on saved inputs."""
    for name in ("minillava", "modeling_minillava", "processing", "train"):
        sys.modules[name] = None
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(repo_id, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**load_file(inputs_file)).logits
    save_file({"logits": logits.contiguous()}, logits_file)
    return {"model_module": type(model).__module__, "processor_module": type(processor).__module__}


def push_dataset(repo_id: str) -> None:
    """Client process: pushes a `messages` + `images` dataset with `datasets`."""
    from datasets import Dataset
    from tiny import make_image

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
    ]
    Dataset.from_dict({"messages": [messages] * 3, "images": [[make_image(i)] for i in range(3)]}).push_to_hub(repo_id)


def read_hub_dataset(repo_id: str, model_folder: str) -> dict:
    """Client process: reads a Hub dataset by id as `minillava sft` does."""
    import minillava.modeling  # noqa: F401  (registers the minillava classes)
    from minillava.processing import MiniLlavaProcessor
    from minillava.train.training.data import load_sft_dataset

    dataset, report = load_sft_dataset(repo_id, MiniLlavaProcessor.from_pretrained(model_folder), max_length=512)
    return {
        "rows": len(dataset),
        "skipped": len(report.skipped),
        "sources": [row["source"] for row in dataset],
        "answers": [row["messages"][1]["content"][0]["text"] for row in dataset],
        "sizes": [list(row["images"][0].size) for row in dataset],
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sft_helpers import build_tiny_models, write_llava_dataset

    root = tmp_path_factory.mktemp("hub-run")
    built = build_tiny_models(root / "built")
    data, images = write_llava_dataset(root / "data", num_samples=8)
    return root, built["llava-1.5"][0], data, images


def test_sft_pushes_during_and_after_training_and_the_repo_loads_by_id(workdir, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download
    from sft_helpers import image_inputs
    from transformers import AutoModelForImageTextToText

    from minillava.processing import MiniLlavaProcessor

    root, model_folder, data, images = workdir
    output_dir = tmp_path / "out"
    argv = [
        "--config", "tiny-cpu-align",
        "--model_name_or_path", str(model_folder),
        "--dataset_name", str(data), "--image_folder", str(images),
        "--output_dir", str(output_dir),
        "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--hub_always_push", "true",
        "--push_to_hub", "true", "--hub_model_id", REPO_ID,
    ]  # fmt: skip
    with serve_hub(tmp_path / "hub") as endpoint:
        run_client(endpoint, tmp_path / "home-train", sft_and_push, argv)
        api = HfApi(endpoint=endpoint, token=TOKEN)
        commits = api.list_repo_commits(REPO_ID)
        titles = [commit.title for commit in commits]
        assert "End of training" in titles
        during = [c for c in commits if c.title.startswith("Training in progress, step")]
        assert during, f"nothing was pushed during training: {titles}"
        code = {"modeling_minillava.py", "modeling_base.py", "configuration_minillava.py", "processing_minillava.py"}
        for commit in (during[-1], commits[0]):
            files = set(api.list_repo_files(REPO_ID, revision=commit.commit_id))
            assert code | {"model.safetensors", "config.json", "processor_config.json", "chat_template.jinja"} <= files
            assert "README.md" in files and not {
                f for f in files if f.endswith((".bin", ".pt", ".pth")) and "model" in f
            }
        card = open(hf_hub_download(REPO_ID, "README.md", endpoint=endpoint, cache_dir=tmp_path / "cache")).read()
        assert "stage **align**" in card and "| train_loss |" in card
        assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in card

        processor = MiniLlavaProcessor.from_pretrained(output_dir)
        inputs = dict(image_inputs(processor, seed=3))
        save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
        result = run_client(
            endpoint,
            tmp_path / "home-load",
            load_by_id,
            REPO_ID,
            str(tmp_path / "inputs.safetensors"),
            str(tmp_path / "logits.safetensors"),
        )
    assert result["model_module"].startswith("transformers_modules")
    assert result["processor_module"].startswith("transformers_modules")
    local = AutoModelForImageTextToText.from_pretrained(output_dir).eval()
    with torch.no_grad():
        expected = local(**inputs).logits
    torch.testing.assert_close(load_file(tmp_path / "logits.safetensors")["logits"], expected, atol=1e-5, rtol=1e-5)


def test_a_hub_dataset_is_read_by_id(workdir, tmp_path):
    _, model_folder, _, _ = workdir
    repo_id = f"{USER}/tiny-vqa"
    with serve_hub(tmp_path / "hub") as endpoint:
        run_client(endpoint, tmp_path / "home-push", push_dataset, repo_id)
        result = run_client(endpoint, tmp_path / "home-read", read_hub_dataset, repo_id, str(model_folder))
    assert result["rows"] == 3 and result["skipped"] == 0
    assert result["answers"] == ["A red circle."] * 3 and result["sizes"] == [[40, 30]] * 3
    assert result["sources"][0] == f"{repo_id}[train] row 0"
