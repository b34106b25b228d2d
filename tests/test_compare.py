"""`minillava compare` on LLaVA conversation JSON files: both architectures trained alike (same data, recipe, budget
and seed), evaluated with `minillava eval`, and reported side by side."""

import json

import pytest
from sft_helpers import run_sft, write_llava_dataset
from tiny import save_parts

from minillava.train.compare import Budget, TimeBudget
from minillava.train.compare.run import main


TYPES = ("colour", "shape")


def typed_records(prefix: str, count: int) -> list[dict]:
    records = []
    for index in range(count):
        kind = TYPES[index % 2]
        answer = ("red", "blue")[index % 2] if kind == "colour" else "circle"
        records.append(
            {
                "id": f"{prefix}-{index}",
                "image": f"{index}.png",
                "type": kind,
                "conversations": [
                    {"from": "human", "value": f"<image>\nWhat {kind} is it?"},
                    {"from": "gpt", "value": answer},
                ],
            }
        )
    return records


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    parts = save_parts(root / "parts")
    data, images = write_llava_dataset(root / "instruct", records=typed_records("train", 8))
    captions, caption_images = write_llava_dataset(root / "captions", num_samples=6)
    eval_data, eval_images = write_llava_dataset(root / "eval", records=typed_records("eval", 6))
    out = root / "out"
    argv = [
        "--data", str(data), "--image_folder", str(images),
        "--captions", str(captions), "--caption_image_folder", str(caption_images),
        "--eval_data", str(eval_data), "--eval_image_folder", str(eval_images),
        "--text_model", parts["llama"], "--llava_vision", parts["clip"], "--minigpt4_vision", parts["blip2"],
        "--align_recipe", "tiny-cpu-align", "--instruct_recipe", "tiny-cpu-instruct",
        "--budget", "6samples", "--instruct_budget", "3steps",
        "--output_dir", str(out), "--max_new_tokens", "4",
    ]  # fmt: skip
    return out, main(argv)


def test_prints_the_table_side_by_side(compared, capsys):
    out, results = compared
    from minillava.train.compare import format_table

    table = format_table(results)
    header, _, *rows = table.splitlines()
    assert header.split() == ["llava-1.5", "minigpt4"]
    labels = [row.rsplit(None, 2)[0].strip() for row in rows]
    assert labels[:3] == ["accuracy before (%)", "accuracy align (%)", "accuracy instruct (%)"]
    assert "colour (instruct)" in labels and "shape (instruct)" in labels
    for label in ("image tokens per image", "trainable parameters align", "samples/s instruct",
                  "peak memory instruct (MiB)", "wall time (min)"):  # fmt: skip
        assert label in labels
    tokens = next(row for row in rows if row.startswith("image tokens per image")).split()[-2:]
    assert tokens == ["16", "4"]  # 16x16 CLIP patches of 4; 4 BLIP-2 queries


def test_both_architectures_get_the_same_budget_and_data(compared):
    out, results = compared
    saved = json.loads((out / "compare.json").read_text())
    assert saved["settings"]["budgets"] == {"align": "6samples", "instruct": "3steps"}
    for arch in ("llava-1.5", "minigpt4"):
        stages = saved["archs"][arch]["stages"]
        assert set(stages) == {"before", "align", "instruct"}
        assert stages["align"]["steps"] == 3  # 6 samples at the recipe's batch of 2
        assert stages["instruct"]["steps"] == 3
        for stage in ("before", "align", "instruct"):
            assert 0.0 <= stages[stage]["accuracy"] <= 100.0
            assert stages[stage]["eval_questions"] == 6
            assert set(stages[stage]["per_type"]) == set(TYPES)
            assert (out / arch / "eval" / stage / "answers.jsonl").is_file()
        for stage in ("align", "instruct"):
            assert stages[stage]["samples_per_second"] > 0 and stages[stage]["peak_memory_mb"] > 0
        # stage 1 trains the connector alone, stage 2 the language model too
        assert 0 < stages["align"]["trainable_parameters"] < stages["instruct"]["trainable_parameters"]
        assert (out / arch / "instruct" / "model.safetensors").is_file()
    assert (out / "compare.png").stat().st_size > 10_000


def test_connector_sizes_are_each_architectures_own(compared):
    """LLaVA-1.5's stage 1 trains its 2-layer MLP, MiniGPT-4's its single linear layer (the Q-Former is frozen)."""
    from transformers import AutoModelForImageTextToText

    out, results = compared
    expected = {}
    for arch, connector in (("llava-1.5", "multi_modal_projector"), ("minigpt4", "language_projection")):
        model = AutoModelForImageTextToText.from_pretrained(out / arch / "init")
        expected[arch] = sum(p.numel() for p in getattr(model.model, connector).parameters())
        assert results["archs"][arch]["stages"]["align"]["trainable_parameters"] == expected[arch], arch


def test_without_captions_only_stage_2_runs_and_a_rerun_replaces_it_only_when_asked(tmp_path):
    parts = save_parts(tmp_path / "parts")
    data, images = write_llava_dataset(tmp_path / "instruct", records=typed_records("train", 4))
    argv = [
        "--data", str(data), "--image_folder", str(images), "--eval_data", str(data),
        "--text_model", parts["llama"], "--llava_vision", parts["clip"], "--archs", "llava-1.5",
        "--instruct_recipe", "tiny-cpu-instruct", "--budget", "1steps", "--eval_before", "false",
        "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "2",
    ]  # fmt: skip
    results = main(argv)
    assert list(results["archs"]) == ["llava-1.5"]
    assert list(results["archs"]["llava-1.5"]["stages"]) == ["instruct"]
    assert not (tmp_path / "out" / "llava-1.5" / "align").exists()
    answers = tmp_path / "out" / "llava-1.5" / "eval" / "instruct" / "answers.jsonl"
    # an earlier comparison's answers must not be resumed as the new models': refused, or replaced on request
    with pytest.raises(
        FileExistsError, match=r"out holds an earlier comparison \(llava-1.5, compare.json, compare.png\)"
    ):
        main([*argv, "--budget", "2steps"])
    answers.write_text('{"question_id": "train-0", "text": "stale"}\n')
    results = main([*argv, "--budget", "2steps", "--overwrite_output_dir", "true"])
    assert results["archs"]["llava-1.5"]["stages"]["instruct"]["steps"] == 2
    assert "stale" not in answers.read_text() and len(answers.read_text().splitlines()) == 4


def test_a_lora_stage_2_is_compared_through_its_adapter(tmp_path):
    """`--instruct_args` reach `minillava sft`: with LoRA, stage 2 saves an adapter, which is what gets evaluated."""
    parts = save_parts(tmp_path / "parts")
    data, images = write_llava_dataset(tmp_path / "instruct", records=typed_records("train", 4))
    results = main([
        "--data", str(data), "--image_folder", str(images), "--eval_data", str(data),
        "--text_model", parts["llama"], "--minigpt4_vision", parts["blip2"], "--archs", "minigpt4",
        "--instruct_recipe", "tiny-cpu-instruct", "--budget", "1steps", "--eval_before", "false",
        "--instruct_args", "--use_peft true --lora_r 4 --lora_alpha 8",
        "--output_dir", str(tmp_path / "out"), "--max_new_tokens", "2",
    ])  # fmt: skip
    column = results["archs"]["minigpt4"]
    assert (tmp_path / "out" / "minigpt4" / "instruct" / "adapter_config.json").is_file()
    assert 0 < column["stages"]["instruct"]["trainable_parameters"] < column["total_parameters"] / 2
    assert column["stages"]["instruct"]["eval_questions"] == 4


@pytest.mark.parametrize(
    "spec, expected",
    [("2epochs", Budget(2, "epochs")), ("500 steps", Budget(500, "steps")), ("1epoch", Budget(1, "epochs")),
     ("8000samples", Budget(8000, "samples")), ("1.5minutes", Budget(1.5, "minutes")), ("30min", Budget(30, "minutes"))],
)  # fmt: skip
def test_budget_spellings(spec, expected):
    assert Budget.parse(spec) == expected


@pytest.mark.parametrize("spec", ["3 apples", "0steps", "-1epochs", "2.5steps", "steps"])
def test_bad_budgets_are_refused_by_name(spec):
    with pytest.raises(ValueError, match=f"budget {spec!r}"):
        Budget.parse(spec)


def test_bad_arguments_fail_before_anything_is_built(tmp_path):
    with pytest.raises(ValueError, match="--archs 'llava-1.5,blip3'"):
        main(["--data", "d.json", "--eval_data", "e.json", "--text_model", "lm", "--archs", "llava-1.5,blip3",
              "--output_dir", str(tmp_path / "a")])  # fmt: skip
    with pytest.raises(ValueError, match="budget '3 apples'"):
        main(["--data", "d.json", "--eval_data", "e.json", "--text_model", "lm", "--budget", "3 apples",
              "--output_dir", str(tmp_path / "b")])  # fmt: skip
    with pytest.raises(FileNotFoundError, match="missing.json: no such file"):
        main(["--data", "missing.json", "--eval_data", "e.json", "--text_model", "lm",
              "--output_dir", str(tmp_path / "c")])  # fmt: skip
    assert not (tmp_path / "a").exists() and not (tmp_path / "c" / "llava-1.5").exists()


def test_a_minute_budget_stops_training_at_the_deadline(tmp_path):
    """The time budget ends training at the first step past it, whatever the recipe's step count."""
    from sft_helpers import build_tiny_models

    built = build_tiny_models(tmp_path)
    data, images = write_llava_dataset(tmp_path / "data", num_samples=8)
    budget = TimeBudget(0.0)
    trainer, _ = run_sft(
        "tiny-cpu-instruct",
        model_name_or_path=str(built["llava-1.5"][0]),
        dataset_name=str(data),
        image_folder=str(images),
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        callbacks=[budget],
    )
    assert trainer.state.global_step == 1 and budget.stopped_at_step == 1
