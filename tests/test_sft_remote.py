"""A saved minillava model (each architecture) trains with TRL's own SFTTrainer and vision collator, with
`assistant_only_loss=True`, in a process where minillava is not importable."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sft_helpers import build_tiny_models


SCRIPT = Path(__file__).parent / "scripts" / "trl_sft_remote.py"
END_TOKENS = {"llava-1.5": "</s>", "minigpt4": "###"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_trl_sft_trainer_trains_a_saved_model_without_minillava(arch, built, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(built[arch][0]), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["model_module"].startswith("transformers_modules")
    assert result["processor_module"].startswith("transformers_modules")
    assert result["collator"] == "DataCollatorForVisionLanguageModeling"
    end = END_TOKENS[arch]
    assert result["answers"] == [f" A red circle.{end}", f" yes{end}"], "loss on the answers and end token only"
    assert result["image_labels_masked"]
    assert len(result["losses"]) == 2 and all(loss > 0 for loss in result["losses"])
    assert result["changed"] > 0 and result["connector_changed"]
