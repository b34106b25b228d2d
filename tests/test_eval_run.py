"""`minillava eval` end to end (`minillava.train.eval.run`): tiny fixture files of each benchmark's format (LLaVA's
eval question files, each benchmark's own annotations), answered by tiny models of both architectures and by a
transformers-native llava-hf folder, written as LLaVA's answer JSONL and scored; `--predictions` scoring without a
model; resuming after a real SIGKILL and after a torn last line; stopping at MiniGPT-4's `###`; the errors."""

import base64
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sft_helpers import build_tiny_models
from tiny import make_image, save_llava_hf

import minillava.modeling  # noqa: F401  (registers the Auto classes)
from minillava.train.eval import read_answers
from minillava.train.eval.run import evaluate_model, generate_answers, load_model, main


ROOT = Path(__file__).resolve().parents[1]
SHORT = "Answer the question using a single word or phrase."
FAST = ["--batch_size", "2", "--max_new_tokens", "4", "--no_progress"]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(seed, size=(20 + 3 * seed, 18)).save(path)


def ten(*answers: str) -> list[dict]:
    """VQAv2-style human answers: the given ones, repeated in turn to make ten."""
    return [{"answer": answers[i % len(answers)], "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ----------------------------------------------------------------------------------------------------------------
# fixture files, one per format: benchmark -> (questions, annotations or None, image folder)


def gqa(root: Path):
    for i in (1, 2):
        save_image(root / "images" / f"n{i}.jpg", i)
    questions = write_jsonl(
        root / "llava_gqa_testdev_balanced.jsonl",
        [
            {"question_id": "20001", "image": "n1.jpg", "text": f"Is the sky blue?\n{SHORT}"},
            {"question_id": "20002", "image": "n2.jpg", "text": "What colour is the car?"},
            {"question_id": "20003", "image": "n1.jpg", "text": "Which side is the dog on?"},
        ],
    )
    annotations = write_json(
        root / "testdev_balanced_questions.json",
        {
            "20001": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
            "20002": {"answer": "red", "isBalanced": True, "types": {"structural": "query", "semantic": "attr"}},
            "20003": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
            "20004": {"answer": "no", "isBalanced": False, "types": {"structural": "verify", "semantic": "obj"}},
        },
    )
    return questions, annotations, root / "images"


def pope(root: Path):
    questions, labels = [], {"adversarial": [], "random": []}
    for split, first in (("adversarial", 1), ("random", 11)):
        for offset, (thing, label) in enumerate((("dog", "yes"), ("cat", "no"), ("car", "yes"))):
            image = f"COCO_val2014_{first + offset:012d}.jpg"
            save_image(root / "val2014" / image, first + offset)
            text = f"Is there a {thing} in the image?"
            questions.append({"question_id": first + offset, "image": image, "text": text, "category": split})
            labels[split].append({"question_id": first + offset, "image": image, "text": text, "label": label})
    for split, records in labels.items():
        write_jsonl(root / "coco" / f"coco_pope_{split}.json", records)
    return write_jsonl(root / "llava_pope_test.jsonl", questions), root / "coco", root / "val2014"


def mme(root: Path):
    release = root / "MME_Benchmark_release_version"
    questions = []
    for task, image, pairs in (
        (
            "existence",
            "a.png",
            (("Is there a circle in this image?", "Yes"), ("Is there a square in this image?", "No")),
        ),
        (
            "count",
            "b.png",
            (("Is there one shape in the image?", "Yes"), ("Are there two shapes in the image?", "No")),
        ),
    ):
        save_image(release / task / image, len(questions))
        lines = []
        for question, answer in pairs:
            lines.append(f"{question} Please answer yes or no.\t{answer}\n")
            questions.append(
                {
                    "question_id": f"{task}/{image}",
                    "image": f"{task}/{image}",
                    "text": f"{question} Please answer yes or no.",
                    "category": task,
                }
            )
        (release / task / image).with_suffix(".txt").write_text("".join(lines), encoding="utf-8")
    return write_jsonl(root / "llava_mme.jsonl", questions), release, release


def vqav2(root: Path):
    questions, annotations = [], []
    for i, (text, answers, kind) in enumerate(
        (
            ("Is the man smiling?", ten("yes"), "yes/no"),
            ("How many dogs are there?", ten("2", "2", "two", "3"), "number"),
            ("What is on the table?", ten("cake"), "other"),
        )
    ):
        image = f"COCO_val2014_{i:012d}.jpg"
        save_image(root / "val2014" / image, i)
        questions.append({"question_id": 262148000 + i, "image": image, "text": f"{text}\n{SHORT}"})
        annotations.append(
            {
                "question_id": 262148000 + i,
                "image_id": i,
                "question_type": "what",
                "answer_type": kind,
                "multiple_choice_answer": answers[0]["answer"],
                "answers": answers,
            }
        )
    return (
        write_jsonl(root / "llava_vqav2_mscoco_val.jsonl", questions),
        write_json(root / "v2_mscoco_val2014_annotations.json", {"annotations": annotations}),
        root / "val2014",
    )


def scienceqa(root: Path):
    records, problems = [], {}
    for pid, has_image, answer in (("4", True, 0), ("7", False, 1), ("9", True, 1)):
        record = {
            "id": pid,
            "conversations": [
                {
                    "from": "human",
                    "value": ("<image>\n" if has_image else "") + "Context: a map.\nWhich is north?\n"
                    "A. up\nB. down\nAnswer with the option's letter from the given choices "
                    "directly.",
                },
                {"from": "gpt", "value": "The answer is A."},
            ],
        }
        if has_image:
            record["image"] = f"{pid}/image.png"
            save_image(root / "test" / pid / "image.png", int(pid))
        records.append(record)
        problems[pid] = {
            "question": "Which is north?",
            "choices": ["up", "down"],
            "answer": answer,
            "image": "image.png" if has_image else None,
            "split": "test",
        }
    write_json(root / "scienceqa" / "problems.json", problems)
    write_json(root / "scienceqa" / "pid_splits.json", {"test": list(problems), "train": []})
    return write_json(root / "llava_test_CQM-A.json", records), root / "scienceqa" / "problems.json", root / "test"


def vqa(root: Path):
    for i in range(3):
        save_image(root / "images" / f"{i}.png", i)
    questions = write_jsonl(
        root / "my_vqa.jsonl",
        [
            {"question_id": "q0", "image": "0.png", "text": "What shape is it?", "answer": "circle"},
            {"question_id": "q1", "image": "1.png", "text": "What colour is it?", "answers": ["red", "dark red"]},
            {"question_id": "q2", "text": "What is two plus two?", "answer": "4"},  # text-only
        ],
    )
    return questions, None, root / "images"  # the question file holds the answers


def textvqa(root: Path):
    questions, data = [], []
    for i, (text, ocr, answer) in enumerate(
        (("what does the sign say?", "STOP", "stop"), ("what brand is the camera?", "nikon", "nikon"))
    ):
        image = f"{i:016x}.jpg"
        save_image(root / "train_images" / image, i)
        questions.append(
            {"question_id": 34602 + i, "image": image, "text": f"{text}\nReference OCR token: {ocr}\n{SHORT}"}
        )
        data.append({"question_id": 34602 + i, "image_id": image[:-4], "question": text, "answers": [answer] * 10})
    return (
        write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", questions),
        write_json(root / "TextVQA_0.5.1_val.json", {"data": data}),
        root / "train_images",
    )


def vizwiz(root: Path):
    questions, annotations = [], []
    for i, (text, answers, kind) in enumerate(
        (
            ("What is this?", ten("unanswerable"), "unanswerable"),
            ("What colour is this shirt?", ten("blue", "navy"), "other"),
        )
    ):
        image = f"VizWiz_val_{i:08d}.jpg"
        save_image(root / "val" / image, i)
        questions.append({"question_id": i, "image": image, "text": text})
        annotations.append(
            {
                "image": image,
                "question": text,
                "answers": answers,
                "answer_type": kind,
                "answerable": int(kind != "unanswerable"),
            }
        )
    return (
        write_jsonl(root / "llava_vizwiz_val.jsonl", questions),
        write_json(root / "val.json", annotations),
        root / "val",
    )


def mmbench(root: Path):
    path = root / "mmbench_dev_20230712.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(columns)
        for index, (question, hint, options, answer) in enumerate(
            (
                ("What shape is it?", "nan", ("circle", "square", "triangle", "nan"), "A"),
                ("What colour is it?", "A colour chart.", ("red", "blue", "nan", "nan"), "B"),
            )
        ):
            buffer = io.BytesIO()
            make_image(index, size=(24, 20)).save(buffer, format="PNG")
            image = base64.b64encode(buffer.getvalue()).decode()
            writer.writerow([index, question, hint, *options, answer, "attribute", "perception", "dev", image])
    return path, None, None  # the TSV holds questions, answers and images


FORMATS = {
    "gqa": gqa,
    "pope": pope,
    "mme": mme,
    "vqav2": vqav2,
    "scienceqa": scienceqa,
    "vqa": vqa,
    "textvqa": textvqa,
    "vizwiz": vizwiz,
    "mmbench": mmbench,
}
NUM_QUESTIONS = {
    "gqa": 3,
    "pope": 6,
    "mme": 4,
    "vqav2": 3,
    "scienceqa": 3,
    "vqa": 3,
    "textvqa": 2,
    "vizwiz": 2,
    "mmbench": 2,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, tuple[Path, Path | None, Path | None]]:
    root = tmp_path_factory.mktemp("eval-data")
    return {name: make(root / name) for name, make in FORMATS.items()}


# ----------------------------------------------------------------------------------------------------------------
# models: both minillava architectures, a llava-hf folder, and a MiniGPT-4 that always answers "yes###"


def save_scripted(source: Path, folder: Path, chain: list[str], end: str | None = None) -> Path:
    """`source` rewired so that greedy decoding writes `chain` (token strings) after any prompt, then `end` (a
    token string, default EOS) forever: attention and MLP outputs are zeroed, so the last position's logits depend
    only on its own token, whose embedding is a basis vector that the LM head maps to the next token."""
    model, processor = load_model(str(source), device="cpu")
    tokenizer = processor.tokenizer
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}], add_generation_prompt=True
    )
    ids = [tokenizer(prompt, add_special_tokens=False).input_ids[-1]]
    ids += [tokenizer.convert_tokens_to_ids(token) for token in chain]
    final = tokenizer.eos_token_id if end is None else tokenizer.convert_tokens_to_ids(end)
    language_model = model.model.language_model
    embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    hidden = embeddings.shape[1]
    assert len(set(ids)) == len(ids) and len(ids) < hidden
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        language_model.norm.weight.fill_(1.0)
        head.zero_()
        for position, token_id in enumerate(ids):
            embeddings[token_id] = torch.nn.functional.one_hot(torch.tensor(position), hidden).float()
            following = ids[position + 1] if position + 1 < len(ids) else final
            head[following, position] = 10.0
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-models")
    built = {arch: folder for arch, (folder, _) in build_tiny_models(root).items()}
    built["llava-hf"] = save_llava_hf(root / "llava-hf")
    # y + es + # + ## : "yes###", with no single token "###" generated, so only the stop string ends it
    built["minigpt4-yes"] = save_scripted(built["minigpt4"], root / "minigpt4-yes", ["y", "es", "#", "##"], "y")
    built["llava-yes"] = save_scripted(built["llava-1.5"], root / "llava-yes", ["y", "es"])
    return built


def run_eval(model: Path | None, benchmark: str, files, output_dir: Path, *flags: str) -> dict:
    """`minillava eval` in this process, on a benchmark's fixture files."""
    questions, annotations, images = files
    argv = [] if model is None else [str(model)]
    argv += ["--benchmark", benchmark, "--questions", str(questions), "--output_dir", str(output_dir)]
    if annotations is not None:
        argv += ["--answers", str(annotations)]
    if images is not None:
        argv += ["--image_folder", str(images)]
    return main([*argv, *flags])


# ----------------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4", "llava-hf"])
def test_every_format_end_to_end(arch, models, data, tmp_path):
    for benchmark, files in data.items():
        out = tmp_path / benchmark
        results = run_eval(models[arch], benchmark, files, out, *FAST)
        saved = json.loads((out / "results.json").read_text())
        assert saved["benchmark"] == benchmark and isinstance(saved["overall"], float), benchmark
        assert saved["overall"] == results["overall"] and saved["metrics"]
        assert saved["num_unmatched_answers"] == 0, (benchmark, saved["unmatched_examples"])
        assert saved["metrics"]["num_missing"] == 0, benchmark
        assert (out / "results.png").stat().st_size > 5_000, benchmark
        answers = read_answers(out / "answers.jsonl")
        assert len(answers) == NUM_QUESTIONS[benchmark] == saved["generation"]["num_generated"], benchmark
        record = answers[0].extra
        assert set(record) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
        assert record["model_id"] == arch
        assert "###" not in "".join(answer.text for answer in answers)


def test_response_format_prompts_are_asked(models, data, tmp_path):
    run_eval(models["llava-1.5"], "gqa", data["gqa"], tmp_path / "gqa", *FAST)
    prompts = [answer.prompt for answer in read_answers(tmp_path / "gqa" / "answers.jsonl")]
    assert prompts == [
        f"Is the sky blue?\n{SHORT}",
        f"What colour is the car?\n{SHORT}",
        f"Which side is the dog on?\n{SHORT}",
    ]  # the first already had it: not doubled
    run_eval(models["llava-1.5"], "vizwiz", data["vizwiz"], tmp_path / "vizwiz", *FAST)
    prompt = read_answers(tmp_path / "vizwiz" / "answers.jsonl")[0].prompt
    assert prompt == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    )
    run_eval(models["llava-1.5"], "mmbench", data["mmbench"], tmp_path / "mmbench", *FAST)
    prompt = read_answers(tmp_path / "mmbench" / "answers.jsonl")[1].prompt
    assert prompt == (
        "A colour chart.\nWhat colour is it?\nA. red\nB. blue\n"
        "Answer with the option's letter from the given choices directly."
    )


@pytest.mark.parametrize("arch", ["minigpt4-yes", "llava-yes"])
def test_answers_stop_at_the_turn_end_and_are_scored(arch, models, data, tmp_path):
    """A model that writes "yes" then MiniGPT-4's "###" (as "#" + "##") or EOS: every answer is "yes", so the
    scores are known: POPE (labels yes, no, yes in each split) F1 = 0.8; MME perception = 2 tasks x (50 + 0)."""
    flags = ["--batch_size", "3", "--max_new_tokens", "12", "--no_progress"]
    pope_results = run_eval(models[arch], "pope", data["pope"], tmp_path / "pope", *flags)
    assert [answer.text for answer in read_answers(tmp_path / "pope" / "answers.jsonl")] == ["yes"] * 6
    assert pope_results["overall"] == pytest.approx(80.0)
    assert pope_results["metrics"]["per_split"]["random"]["precision"] == pytest.approx(2 / 3)
    assert run_eval(models[arch], "mme", data["mme"], tmp_path / "mme", *flags)["overall"] == pytest.approx(100.0)
    gqa_results = run_eval(models[arch], "gqa", data["gqa"], tmp_path / "gqa", *flags)
    assert gqa_results["overall"] == pytest.approx(100 / 3)  # yes, red, left


def test_generation_stops_at_the_separator_not_at_max_new_tokens(models, data, tmp_path):
    model, processor = load_model(str(models["minigpt4-yes"]), device="cpu")
    steps = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *_: steps.append(1))
    summary = generate_answers(
        model,
        processor,
        data["gqa"][0],
        data["gqa"][2],
        "gqa",
        tmp_path / "a.jsonl",
        batch_size=3,
        max_new_tokens=40,
        progress=False,
    )
    hook.remove()
    assert summary.num_generated == 3
    assert len(steps) == 4  # y, es, #, ## (the prefill gives the first)
    assert [answer.text for answer in read_answers(tmp_path / "a.jsonl")] == ["yes"] * 3


def test_batched_answers_equal_one_at_a_time(models, data, tmp_path):
    """Left padding: the same greedy answers in batches of 4 (mixed image / text-only, different lengths) as alone."""
    for arch in ("llava-1.5", "minigpt4", "llava-hf"):
        texts = {}
        for batch_size in (1, 4):
            out = tmp_path / f"{arch}-{batch_size}"
            run_eval(
                models[arch],
                "vqa",
                data["vqa"],
                out,
                "--batch_size",
                str(batch_size),
                "--max_new_tokens",
                "6",
                "--no_progress",
            )
            texts[batch_size] = [answer.text for answer in read_answers(out / "answers.jsonl")]
        assert texts[1] == texts[4], arch


def test_python_api_and_remote_code(models, data, tmp_path):
    questions, annotations, images = data["gqa"]
    results = evaluate_model(
        str(models["minigpt4"]),
        "gqa",
        questions,
        images,
        tmp_path,
        annotations=annotations,
        max_new_tokens=4,
        trust_remote_code=True,
        progress=False,
    )
    assert json.loads((tmp_path / "results.json").read_text())["overall"] == results["overall"]
    assert results["generation"]["num_generated"] == 3 and results["model"] == "minigpt4"


def test_limit_scores_the_questions_asked(models, data, tmp_path):
    results = run_eval(models["llava-yes"], "gqa", data["gqa"], tmp_path, "--limit", "1", *FAST)
    assert len(lines_of(tmp_path / "answers.jsonl")) == 1
    assert results["overall"] == 100.0 and results["skip_missing"] and results["metrics"]["num_missing"] == 2
    results = run_eval(models["llava-yes"], "gqa", data["gqa"], tmp_path, *FAST)  # the rest, resumed
    assert results["generation"]["num_resumed"] == 1 and results["generation"]["num_generated"] == 2
    assert results["overall"] == pytest.approx(100 / 3) and not results["skip_missing"]


def test_mmbench_all_rounds_asks_every_rotation(models, data, tmp_path):
    results = run_eval(models["llava-1.5"], "mmbench", data["mmbench"], tmp_path, "--all_rounds", *FAST)
    answers = read_answers(tmp_path / "answers.jsonl")
    assert [(answer.question_id, answer.round_id) for answer in answers] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert answers[4].prompt.startswith("A colour chart.\nWhat colour is it?\nA. blue\nB. red\n")
    assert results["metrics"]["num_questions"] == 2 and results["metrics"]["num_single_pass_questions"] == 0


def test_vqav2_without_annotations_writes_the_submission_file(models, data, tmp_path):
    questions, _, images = data["vqav2"]
    results = run_eval(models["llava-yes"], "vqav2", (questions, None, images), tmp_path, *FAST)
    assert results["overall"] is None and not (tmp_path / "results.json").exists()
    submission = json.loads((tmp_path / "vqav2_submission.json").read_text())
    assert submission == [{"question_id": 262148000 + i, "answer": "yes"} for i in range(3)]


# ----------------------------------------------------------------------------------------------------------------
# --predictions: scoring an answers file without a model


def answers_file(path: Path, rows: list[tuple]) -> Path:
    return write_jsonl(
        path,
        [
            {
                "question_id": qid,
                "prompt": prompt,
                "text": text,
                "answer_id": str(i),
                "model_id": "llava-v1.5-7b",
                "metadata": {},
            }
            for i, (qid, prompt, text) in enumerate(rows)
        ],
    )


def test_predictions_are_scored_without_a_model(data, tmp_path):
    gqa_answers = answers_file(
        tmp_path / "gqa" / "answers.jsonl", [("20001", "q", "Yes"), ("20002", "q", "blue"), ("20003", "q", "left.")]
    )
    results = main(["--benchmark", "gqa", "--predictions", str(gqa_answers), "--answers", str(data["gqa"][1])])
    assert results["overall"] == pytest.approx(200 / 3)  # yes, left right; blue wrong
    assert json.loads((tmp_path / "gqa" / "results.json").read_text())["overall"] == results["overall"]
    assert (tmp_path / "gqa" / "results.png").exists()

    mme_answers = answers_file(
        tmp_path / "mme.jsonl",
        [
            ("existence/a.png", f"Is there a circle in this image? Please answer yes or no.\n{SHORT}", "Yes"),
            ("existence/a.png", f"Is there a square in this image? Please answer yes or no.\n{SHORT}", "No"),
            ("count/b.png", "Is there one shape in the image? Please answer yes or no.", "No"),
            ("count/b.png", "Are there two shapes in the image? Please answer yes or no.", "No"),
        ],
    )
    results = main(
        [
            "--benchmark",
            "mme",
            "--predictions",
            str(mme_answers),
            "--answers",
            str(data["mme"][1]),
            "--output_dir",
            str(tmp_path / "mme"),
        ]
    )
    assert results["overall"] == pytest.approx(200 + 50)  # existence: both right; count: one of two, image wrong
    assert results["metrics"]["per_task"]["existence"]["score"] == pytest.approx(200)

    # POPE's two splits need the question file (its category names each question's split)
    pope_answers = answers_file(tmp_path / "pope.jsonl", [(qid, "q", "yes") for qid in (1, 2, 3, 11, 12, 13)])
    results = main(
        [
            "--benchmark",
            "pope",
            "--predictions",
            str(pope_answers),
            "--answers",
            str(data["pope"][1]),
            "--questions",
            str(data["pope"][0]),
            "--output_dir",
            str(tmp_path / "pope"),
        ]
    )
    assert results["overall"] == pytest.approx(80.0)


def test_predictions_of_a_model_run_score_the_same(models, data, tmp_path):
    for benchmark in ("pope", "mmbench", "vizwiz"):
        ran = run_eval(models["minigpt4"], benchmark, data[benchmark], tmp_path / benchmark, *FAST)
        questions, annotations, _ = data[benchmark]
        scored = main(
            [
                "--benchmark",
                benchmark,
                "--predictions",
                str(tmp_path / benchmark / "answers.jsonl"),
                "--questions",
                str(questions),
                "--output_dir",
                str(tmp_path / f"{benchmark}-scored"),
            ]
            + (["--answers", str(annotations)] if annotations else [])
        )
        assert scored["overall"] == ran["overall"] and scored["metrics"] == ran["metrics"], benchmark


# ----------------------------------------------------------------------------------------------------------------
# resuming


def kill_questions(root: Path, count: int = 16) -> tuple[Path, Path, Path]:
    for i in range(4):
        save_image(root / "images" / f"{i}.png", i)
    questions = [
        {
            "question_id": f"k{i}",
            "text": f"Question number {i}: what is it?",
            "answer": "yes",
            **({"image": f"{i % 4}.png"} if i % 5 else {}),
        }
        for i in range(count)
    ]
    return write_jsonl(root / "questions.jsonl", questions), None, root / "images"


def cli(model: Path, files, output_dir: Path, *flags: str) -> list[str]:
    questions, _, images = files
    return [
        sys.executable,
        "-m",
        "minillava.train.cli",
        "eval",
        str(model),
        "--benchmark",
        "vqa",
        "--questions",
        str(questions),
        "--image_folder",
        str(images),
        "--output_dir",
        str(output_dir),
        *flags,
    ]


def test_a_killed_eval_resumes_where_it_stopped(models, tmp_path):
    files = kill_questions(tmp_path / "data")
    flags = ["--batch_size", "2", "--max_new_tokens", "4"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    killed = tmp_path / "killed"
    answers = killed / "answers.jsonl"
    with open(tmp_path / "child.log", "w") as log:
        child = subprocess.Popen(
            cli(models["llava-1.5"], files, killed, *flags), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while not (answers.exists() and answers.read_bytes().count(b"\n") >= 1):
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "no answer written in 120 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    before = lines_of(answers)
    assert 1 <= len(before) < 16, "the run finished before it was killed"

    resumed = subprocess.run(
        cli(models["llava-1.5"], files, killed, *flags), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    after = lines_of(answers)
    assert after[: len(before)] == before  # earlier lines untouched
    ids = [json.loads(line)["question_id"] for line in after]
    assert sorted(ids) == sorted(f"k{i}" for i in range(16)) and len(set(ids)) == 16
    assert f"{len(before)} of the 16 questions are answered already" in resumed.stderr

    straight = tmp_path / "straight"
    main(cli(models["llava-1.5"], files, straight, *flags, "--no_progress")[4:])
    expected = {record["question_id"]: record for record in map(json.loads, lines_of(straight / "answers.jsonl"))}
    for record in map(json.loads, after):
        assert (record["prompt"], record["text"]) == (
            expected[record["question_id"]]["prompt"],
            expected[record["question_id"]]["text"],
        )
    results, reference = (json.loads((folder / "results.json").read_text()) for folder in (killed, straight))
    assert results["metrics"] == reference["metrics"] and results["overall"] == reference["overall"]


def test_a_torn_last_line_is_dropped_and_answered_again(models, data, tmp_path, caplog):
    first = run_eval(models["llava-1.5"], "mme", data["mme"], tmp_path / "whole", *FAST)
    whole = lines_of(tmp_path / "whole" / "answers.jsonl")
    answers = tmp_path / "torn" / "answers.jsonl"
    answers.parent.mkdir()
    answers.write_text("\n".join(whole[:2]) + "\n" + whole[2][:25], encoding="utf-8")  # killed while writing line 3
    results = run_eval(models["llava-1.5"], "mme", data["mme"], tmp_path / "torn", *FAST)
    assert "line 3 was cut short" in caplog.text
    after = lines_of(answers)
    assert after[:2] == whole[:2] and len(after) == 4
    assert [json.loads(line)["text"] for line in after] == [json.loads(line)["text"] for line in whole]
    assert results["generation"]["num_resumed"] == 2 and results["overall"] == first["overall"]
    # a complete last line that only lacks its newline is kept
    answers.write_text("\n".join(whole), encoding="utf-8")
    results = run_eval(tmp_path / "no-such-model", "mme", data["mme"], tmp_path / "torn", *FAST)
    assert results["generation"]["num_generated"] == 0 and lines_of(answers) == whole  # nothing to ask: no model
    assert results["overall"] == first["overall"]


# ----------------------------------------------------------------------------------------------------------------
# errors


def test_a_missing_image_names_the_question_and_the_path(models, data, tmp_path):
    questions, annotations, images = data["gqa"]
    broken = write_jsonl(
        tmp_path / "q.jsonl",
        [json.loads(line) for line in lines_of(questions)]
        + [{"question_id": "20009", "image": "gone.jpg", "text": "Where?"}],
    )
    with pytest.raises(SystemExit) as error:
        run_eval(models["llava-1.5"], "gqa", (broken, annotations, images), tmp_path / "out", *FAST)
    message = str(error.value)
    assert f"{broken}:line 4" in message and "'20009'" in message and str(images / "gone.jpg") in message
    assert not (tmp_path / "out" / "answers.jsonl").exists()  # refused before any model ran


def test_bad_files_are_refused_with_file_and_line(models, data, tmp_path):
    questions, annotations, images = data["gqa"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines_of(questions)[0] + '\n{"question_id": 5}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as error:
        run_eval(models["llava-1.5"], "gqa", (bad, annotations, images), tmp_path / "out", *FAST)
    assert str(error.value) == f"minillava eval: {bad}: line 2: missing 'text'"
    with pytest.raises(SystemExit) as error:
        run_eval(models["llava-1.5"], "gqa", (questions, data["vqav2"][1], images), tmp_path / "out", *FAST)
    assert str(data["vqav2"][1]) in str(error.value)
    assert not (tmp_path / "out" / "answers.jsonl").exists()


def test_an_answers_file_of_other_questions_is_not_resumed(models, data, tmp_path):
    run_eval(models["llava-1.5"], "gqa", data["gqa"], tmp_path, *FAST)
    before = (tmp_path / "answers.jsonl").read_bytes()
    with pytest.raises(SystemExit) as error:
        run_eval(models["llava-1.5"], "vqav2", data["vqav2"], tmp_path, *FAST)
    assert "answers.jsonl:line 1" in str(error.value) and "'20001'" in str(error.value)
    assert (tmp_path / "answers.jsonl").read_bytes() == before


def test_two_runs_never_write_one_answers_file(models, data, tmp_path):
    import fcntl

    answers = tmp_path / "answers.jsonl"
    with open(answers, "a") as other_run:
        fcntl.flock(other_run, fcntl.LOCK_EX)
        with pytest.raises(SystemExit) as error:
            run_eval(models["llava-1.5"], "gqa", data["gqa"], tmp_path, *FAST)
    assert f"{answers} is being written by another `minillava eval`" in str(error.value)
    assert answers.read_bytes() == b""


def test_vqa_questions_without_answers_are_answered_not_scored(models, data, tmp_path):
    questions, _, images = data["gqa"]  # no answer in its lines
    results = run_eval(models["llava-1.5"], "vqa", (questions, None, images), tmp_path, *FAST)
    assert results["overall"] is None and len(lines_of(tmp_path / "answers.jsonl")) == 3
    assert not (tmp_path / "results.json").exists()


def test_cli_lists_eval_and_needs_a_model_or_predictions(capsys):
    from minillava.train.cli import main as minillava

    minillava([])
    assert "eval" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--benchmark", "gqa"])
    assert "give MODEL" in capsys.readouterr().err
