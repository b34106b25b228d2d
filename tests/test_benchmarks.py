"""The speed benchmark compares like with like: the same samples, weights and batches in every run (a quick run of two
configurations end to end), and its 7B FLOPs figures follow from the published shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import train_speed  # noqa: E402


def test_the_data_has_the_llava_665k_kinds_and_fits_max_length():
    samples = train_speed.llava_665k_shaped(400)
    kinds = {kind: sum(s["kind"] == kind for s in samples) for kind in ("vqa", "conversation", "detail", "text")}
    assert kinds["vqa"] > kinds["conversation"] > kinds["detail"] > 0 and kinds["text"] > 0
    assert {len(s["images"]) for s in samples} == {0, 1, 2}
    answers = [
        len(m["content"][0]["text"].split()) for s in samples for m in s["messages"] if m["role"] == "assistant"
    ]
    assert min(answers) == 1 and max(answers) >= 60  # single-word VQA answers next to long descriptions


def test_vision_flops_match_hand_worked_figures():
    # ViT-L/14 at 336 px, 23 of its 24 layers (feature layer -2): 577 tokens, hidden 1024, MLP 4096
    per_layer = 2 * 577 * (4 * 1024**2 + 2 * 1024 * 4096) + 4 * 577**2 * 1024
    assert train_speed.vit_forward_flops(23, 1024, 4096, 577) == 23 * per_layer
    assert 0.36e12 < 23 * per_layer < 0.37e12  # ~0.37 TFLOPs an image
    shares = train_speed.vision_share_at_7b()
    # caching pays in front of a frozen LM with few image tokens (MiniGPT-4), hardly at all for LLaVA-1.5
    assert shares["minigpt4 stage 1 (captions, LM frozen)"]["vision_share"] > 0.1
    assert all(row["vision_share"] < 0.05 for name, row in shares.items() if name.startswith("llava"))


def test_quick_run_trains_native_and_minillava_on_the_same_batches(tmp_path):
    out = tmp_path / "results"
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_speed.py"), "--quick", "--configs", "native,padded,packed",
         "--output_dir", str(out)],
        check=True,
    )  # fmt: skip
    report = json.loads((out / "train_speed.json").read_text())
    native, padded, packed = (report["training"][name] for name in ("native", "padded", "packed"))
    # same weights, same samples, same random batches: the same losses through TRL+transformers and minillava
    assert padded["first_loss"] == pytest.approx(native["first_loss"], abs=1e-4)
    assert padded["train_loss"] == pytest.approx(native["train_loss"], abs=1e-4)
    assert native["same_real_tokens"] and padded["same_real_tokens"] and packed["same_real_tokens"]
    assert packed["padding_fraction"] < padded["padding_fraction"] == pytest.approx(native["padding_fraction"])
    assert all(row["same_tokens"] for row in report["generation"].values())
    assert (out / "train_speed.png").stat().st_size > 10_000
