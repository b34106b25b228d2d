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
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) == {"llava-1.5", "minigpt4"}
    for rows in saved.values():
        assert set(rows) == {"before", "align", "instruct"}
        assert 0.0 <= rows["before"]["accuracy"] <= 1.0
        for stage in ("align", "instruct"):
            assert rows[stage]["samples_per_second"] > 0 and rows[stage]["peak_memory_mb"] > 0
            assert len(rows[stage]["loss_curve"]) >= 2
    assert (out / "results.png").stat().st_size > 10_000


def test_both_architectures_learn_the_task(quick_demo):
    _, results = quick_demo
    for arch, rows in results.items():
        assert rows["instruct"]["accuracy"] >= rows["before"]["accuracy"] + 0.2, arch
        first, last = rows["instruct"]["loss_curve"][0][1], rows["instruct"]["loss_curve"][-1][1]
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
