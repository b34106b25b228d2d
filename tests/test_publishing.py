"""Publishing: the cards, trackers and loss curves of what `minillava sft` and `minillava merge` push.

- a LoRA run from a local folder that came from the Hub (a `snapshot_download` folder) names that Hub id as its
  `base_model` (with the `base_model:adapter:` tag); a run from a folder with no Hub id leaves `base_model` out and
  writes no local path in its card, checkpoints included (PEFT's own card names the base by its path);
- `minillava merge --push-to-hub` pushes a real card: `base_model`, `pipeline_tag`, tags, what was merged, the
  adapter's training, how to load;
- the recipes log to TensorBoard by default (`report_to: auto`), not with `--report_to none`;
- `minillava sft` writes `loss_curve.png` next to the model, and it is pushed with it.

The Hub is the local server of tests/hub_server.py; the client runs in a fresh process with HF_ENDPOINT set.
"""

import logging
import re
import sys

import pytest
from hub_server import TOKEN, USER, run_client, serve_hub


BASE_ID = f"{USER}/tiny-llava-base"
ADAPTER_ID = f"{USER}/tiny-llava-lora"
MERGED_ID = f"{USER}/tiny-llava-merged"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def publish(model_folder: str, data: str, images: str, output_dir: str, merged_dir: str) -> dict:
    """Client process: pushes a built model, downloads it into the Hub cache, trains a LoRA adapter on that local
    snapshot with `minillava sft --push_to_hub` (the recipe's default trackers), then merges the pushed adapter by
    id with `minillava merge --push-to-hub`."""
    from huggingface_hub import snapshot_download

    from minillava.train.hub.push import push
    from minillava.train.training.merge import main as merge
    from minillava.train.training.sft import main as sft

    push(model_folder, BASE_ID)
    snapshot = snapshot_download(BASE_ID)
    sft([
        "--config", "tiny-cpu-instruct-lora", "--model_name_or_path", snapshot,
        "--dataset_name", data, "--image_folder", images, "--output_dir", output_dir, "--max_steps", "3",
        "--push_to_hub", "true", "--hub_model_id", ADAPTER_ID,
    ])  # fmt: skip
    merge([ADAPTER_ID, "--output-dir", merged_dir, "--push-to-hub", "--hub-model-id", MERGED_ID])
    return {"snapshot": snapshot}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from sft_helpers import build_tiny_models, write_llava_dataset

    root = tmp_path_factory.mktemp("publishing")
    built = build_tiny_models(root / "built")
    data, images = write_llava_dataset(root / "data", num_samples=6)
    return root, {arch: folder for arch, (folder, _) in built.items()}, data, images


def assert_png_plot(path) -> None:
    """A PNG that PIL reads, of a plot (more than one colour), not an empty file."""
    from PIL import Image

    assert open(path, "rb").read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300
        colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 2, "a blank image"


def test_pushed_adapter_and_merged_cards_name_the_hub_base_with_tensorboard_and_loss_curve(workdir, tmp_path):
    from huggingface_hub import HfApi, ModelCard, hf_hub_download

    from minillava.train.hub.cards import hub_id_of

    root, built, data, images = workdir
    out, merged = tmp_path / "lora", tmp_path / "merged"
    with serve_hub(tmp_path / "hub") as endpoint:
        result = run_client(endpoint, tmp_path / "home", publish, str(built["llava-1.5"]), str(data), str(images),
                            str(out), str(merged))  # fmt: skip
        api = HfApi(endpoint=endpoint, token=TOKEN)

        def download(repo_id: str, name: str) -> str:
            return hf_hub_download(repo_id, name, endpoint=endpoint, token=TOKEN, cache_dir=tmp_path / "cache")

        adapter_files = set(api.list_repo_files(ADAPTER_ID))
        adapter_card = ModelCard.load(download(ADAPTER_ID, "README.md"))
        merged_files = set(api.list_repo_files(MERGED_ID))
        merged_card = ModelCard.load(download(MERGED_ID, "README.md"))
        adapter_curve, merged_curve = download(ADAPTER_ID, "loss_curve.png"), download(MERGED_ID, "loss_curve.png")

    assert "models--" in result["snapshot"], "the base was trained from a folder of the Hub's cache"
    # The adapter: its base is the Hub id the local snapshot came from, never the snapshot's path (PEFT's choice).
    meta = adapter_card.data
    assert meta.base_model == BASE_ID and meta.library_name == "peft" and meta.pipeline_tag == "image-text-to-text"
    assert f"base_model:adapter:{BASE_ID}" in meta.tags and {"minillava", "llava-1.5", "llava", "lora"} <= set(
        meta.tags
    )
    assert result["snapshot"] not in adapter_card.content and "models--" not in adapter_card.content
    assert f'from_pretrained("{BASE_ID}", trust_remote_code=True)' in adapter_card.text
    assert "](loss_curve.png)" in adapter_card.text and "`runs/`" in adapter_card.text
    assert {"adapter_model.safetensors", "loss_curve.png"} <= adapter_files
    assert [name for name in adapter_files if re.fullmatch(r"runs/[^/]+/events\.out\.tfevents\..+", name)], (
        "the recipe's default tracker (TensorBoard) logged and its logs were pushed"
    )
    assert list((out / "runs").glob("*/events.out.tfevents.*")), "TensorBoard logs under output_dir/runs/<run>/"
    assert not (out / "_tensorboard").exists(), "the logs written while training moved to runs/ at its end"
    assert_png_plot(out / "loss_curve.png")
    assert_png_plot(adapter_curve)
    assert hub_id_of(out) == ADAPTER_ID, "a pushed output folder is traced to its repo"

    # The merged model: a fine-tune of the same base, with what was merged and how to load it.
    meta = merged_card.data
    assert meta.base_model == BASE_ID and meta.base_model_relation == "finetune"
    assert meta.library_name == "transformers" and meta.pipeline_tag == "image-text-to-text"
    assert {"minillava", "llava-1.5", "llava", "stage-instruct", f"base_model:finetune:{BASE_ID}"} <= set(meta.tags)
    text = merged_card.text
    assert f"- adapter: `{ADAPTER_ID}` (LoRA r 8, alpha 16" in text
    assert f"- base model: `{BASE_ID}`" in text and "stage **instruct**" in text
    assert "| LoRA r / alpha / dropout | 8 / 16 / 0.05 |" in text, "the adapter's training settings are quoted"
    assert "| train_loss |" in text and "](loss_curve.png)" in text
    assert f'AutoModelForImageTextToText.from_pretrained("{MERGED_ID}", trust_remote_code=True)' in text
    assert str(root) not in merged_card.content and str(tmp_path) not in merged_card.content
    assert {"model.safetensors", "config.json", "modeling_minillava.py", "loss_curve.png"} <= merged_files
    assert "adapter_config.json" not in merged_files
    assert_png_plot(merged_curve)


def test_a_run_from_a_folder_without_hub_id_writes_no_local_path_and_no_tracker_when_told(workdir, tmp_path):
    from huggingface_hub import ModelCard
    from sft_helpers import run_sft

    from minillava.train.training.merge import main as merge

    root, built, data, images = workdir
    out, merged = tmp_path / "lora", tmp_path / "merged"
    run_sft("tiny-cpu-instruct-lora", "--dataset_name", str(data), "--image_folder", str(images),
            model_name_or_path=built["minigpt4"], output_dir=out, max_steps=3, save_strategy="steps", save_steps=2,
            report_to="none")  # fmt: skip
    for card_file in (out / "README.md", out / "checkpoint-2" / "README.md"):
        card = ModelCard.load(card_file)
        assert card.data.base_model is None and not [tag for tag in card.data.tags if tag.startswith("base_model:")]
        assert card.data.library_name == "peft" and {"minillava", "minigpt4"} <= set(card.data.tags)
        assert str(root) not in card.content and str(tmp_path) not in card.content, f"a local path in {card_file}"
        assert "- starting point: `minigpt4` (a local folder with no known Hub id): `base_model` is left out" in (
            card.text
        )
    assert not list(out.rglob("events.out.tfevents.*")) and not (out / "runs").exists(), "--report_to none"
    assert_png_plot(out / "loss_curve.png")
    assert "](loss_curve.png)" in (out / "README.md").read_text()

    merge([str(out), "--output-dir", str(merged)])
    card = ModelCard.load(merged / "README.md")
    assert card.data.base_model is None and card.data.pipeline_tag == "image-text-to-text"
    assert {"minillava", "minigpt4", "stage-instruct"} <= set(card.data.tags)
    assert not [tag for tag in card.data.tags if tag.startswith("base_model:")]
    assert str(root) not in card.content and str(tmp_path) not in card.content
    assert "- adapter: `lora` (a local folder with no known Hub id)" in card.text
    assert "- base model: `minigpt4` (a local folder with no known Hub id): `base_model` is left out" in card.text
    assert_png_plot(merged / "loss_curve.png")


def test_every_recipe_reports_to_tensorboard_by_default_and_a_flag_wins():
    from minillava.train.training.recipes import recipe_names, resolve_recipe
    from minillava.train.training.sft import make_parser
    from minillava.train.training.tracking import resolve_report_to

    cpu = ["--use_cpu", "true", "--bf16", "false", "--tf32", "false", "--model_name_or_path", "m"]
    for name in recipe_names():
        _, training_args, _ = make_parser().parse_args_and_config(["--config", resolve_recipe(name), *cpu])
        assert training_args.report_to == ["auto"], name
    _, training_args, _ = make_parser().parse_args_and_config(
        ["--config", resolve_recipe("tiny-cpu-align"), *cpu, "--report_to", "none"]
    )
    assert resolve_report_to(training_args.report_to) == []
    assert resolve_report_to(["auto", "tensorboard"]) in (["tensorboard"], [])
    pytest.importorskip("tensorboard", reason="TensorBoard is not installed")
    assert resolve_report_to("auto") == ["tensorboard"]


def test_loss_curve_has_train_and_eval_loss_and_never_fails_a_run(tmp_path, caplog, monkeypatch):
    from minillava.train import plots

    history = [{"loss": 2.0 - 0.1 * step, "step": step, "epoch": step / 10} for step in range(1, 11)]
    history += [{"eval_loss": 1.9, "step": 5}, {"eval_loss": 1.5, "step": 10}, {"train_loss": 1.4, "step": 10}]
    assert plots.loss_points(history, "eval_loss") == [(5, 1.9), (10, 1.5)]
    path = plots.save_loss_curve(history, tmp_path / "loss_curve.png", "tiny: loss per step")
    assert path == tmp_path / "loss_curve.png"
    assert_png_plot(path)
    assert plots.save_loss_curve([{"train_loss": 1.0, "step": 1}], tmp_path / "none.png", "t") is None
    assert not (tmp_path / "none.png").exists(), "nothing logged: no image"

    (tmp_path / "a-file").write_text("")
    with caplog.at_level(logging.WARNING, logger="minillava.train.plots"):
        assert plots.save_loss_curve(history, tmp_path / "a-file" / "loss_curve.png", "t") is None
    assert "Could not write the plot" in caplog.text

    caplog.clear()
    plots._warn_no_matplotlib.cache_clear()
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # as where matplotlib is not installed
    with caplog.at_level(logging.WARNING, logger="minillava.train.plots"):
        for _ in range(2):
            assert plots.save_loss_curve(history, tmp_path / "missing.png", "t") is None
    assert caplog.text.count("matplotlib is not installed") == 1, "warned once"
    assert not (tmp_path / "missing.png").exists()
