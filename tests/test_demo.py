"""`minillava demo --quick`: both architectures learn, offline, and the results are written as promised."""

import json
import subprocess
import sys

import pytest

from minillava.train.demo.run import DemoArguments, demo


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    results = demo(DemoArguments(output_dir=str(out), quick=True, components_dir=str(out / "components")))
    return out, results


def test_results_json_has_the_documented_shape(quick_demo):
    out, results = quick_demo
    saved = json.loads((out / "compare.json").read_text())
    assert set(saved["archs"]) == {"llava-1.5", "minigpt4"}
    assert saved["settings"]["budgets"] == {"align": "1epochs", "instruct": "1epochs"}
    for column in saved["archs"].values():
        stages = column["stages"]
        assert set(stages) == {"before", "align", "instruct"}
        assert 0.0 <= stages["before"]["accuracy"] <= 100.0
        for stage in ("align", "instruct"):
            assert stages[stage]["samples_per_second"] > 0 and stages[stage]["peak_memory_mb"] > 0
            assert len(stages[stage]["loss_curve"]) >= 2
        assert set(stages["instruct"]["per_type"]) == {"colour", "shape", "count", "position"}
    assert (out / "compare.png").stat().st_size > 10_000


def test_the_demo_is_compare_on_the_world_files(quick_demo):
    """The world is written as LLaVA JSON; `minillava compare` on those files is the demo."""
    out, _ = quick_demo
    records = json.loads((out / "data" / "eval.json").read_text())
    assert {record["type"] for record in records} == {"colour", "shape", "count", "position"}
    settings = json.loads((out / "compare.json").read_text())["settings"]
    assert settings["data"] == str(out / "data" / "instruct.json")
    assert settings["captions"] == str(out / "data" / "captions.json")
    assert settings["eval_data"] == str(out / "data" / "eval.json")


def test_both_architectures_learn_the_task(quick_demo):
    _, results = quick_demo
    for arch, column in results["archs"].items():
        stages = column["stages"]
        assert stages["instruct"]["accuracy"] >= stages["before"]["accuracy"] + 20, arch
        first, last = stages["instruct"]["loss_curve"][0][1], stages["instruct"]["loss_curve"][-1][1]
        assert last < first, arch


def test_stage_folders_load_with_the_auto_classes(quick_demo):
    out, _ = quick_demo
    from transformers import AutoModelForImageTextToText

    for arch in ("llava-1.5", "minigpt4"):
        model = AutoModelForImageTextToText.from_pretrained(out / arch / "instruct")
        assert type(model).__name__.startswith("MiniLlava" if arch == "llava-1.5" else "MiniGPT4")


@pytest.mark.parametrize("preset", ["tiny-llava-1.5", "tiny-minigpt4"])
def test_tiny_presets_build_from_the_pretrained_parts(quick_demo, preset, tmp_path, monkeypatch):
    from minillava.train.training.build import BuildArguments, build

    out, _ = quick_demo
    monkeypatch.setenv("MINILLAVA_COMPONENTS_CACHE", str(out / "components"))
    model, processor = build(BuildArguments(preset=preset, output_dir=str(tmp_path)))
    assert processor.num_image_tokens == model.config.image_seq_length
    assert str(out / "components") in model.config.text_config._name_or_path


def test_cli_lists_demo():
    proc = subprocess.run(
        [sys.executable, "-m", "minillava.train.cli", "demo", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--quick" in proc.stdout
