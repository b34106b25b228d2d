"""The scorers against the benchmarks' published scoring code, run on the same predictions.

The published code is LLaVA's eval scripts as released on PyPI (`llava/eval/` of llava-torch 1.2.2.post1: TextVQA's
`m4c_evaluator.py`, `eval_textvqa.py`, `eval_pope.py`, `eval_science_qa.py`) and the official VQA evaluation that the
VQAv2 server runs (`vqaEval.py` by the VQA authors, as salesforce-lavis 1.0.2 ships it in `lavis/common/vqa_tools/`).
Both packages pin an old torch, so they are not installed as such: CI unpacks their files alone with
`pip install --no-deps --target DIR llava-torch==1.2.2.post1 salesforce-lavis==1.0.2` and names DIR in
MINILLAVA_OFFICIAL_EVAL_CODE. Their scripts run unmodified, as `__main__` in a subprocess (LLaVA's package
`__init__`, which imports its model code, is bypassed); their classes are loaded from their files.

The predictions are a few hundred seeded draws from the spellings that exercise the answer processing (case,
punctuation, number words, articles, contractions, "3.5", "1,000", ...), so each benchmark's figure is compared on
answers a model really gives, not on a handful of chosen cases. ScienceQA's are limited to the answer shapes on which
that release's `eval_science_qa.py` and LLaVA's current one agree (the current one also strips spaces, reads newlines
as ". " and takes a final "The answer is X" without a period; `parse_scienceqa_answer` follows it, see
test_scorers.py)."""

import functools
import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_scorers import SHORT, answers_file, write_json, write_jsonl

from minillava.train.eval import evaluate, formats, normalize_answer, scorers, vqa_accuracy, write_vqav2_submission


OFFICIAL = os.environ.get("MINILLAVA_OFFICIAL_EVAL_CODE")
pytestmark = pytest.mark.skipif(
    not OFFICIAL,
    reason="MINILLAVA_OFFICIAL_EVAL_CODE is not set: no folder with the published scoring code (see .ci/run)",
)

# Spellings a model or a human annotator gives, each a trap for some step of the processing.
SPELLINGS = [
    "yes", "Yes", "YES", "yes.", "Yes!", "no", "No.", "No, it is not.", "nope",
    "2", "two", "Two", "2.", "two dogs", "Two Dogs", "10", "ten", "none", "0", "zero", "3.5", "3,5", "1,000", "1000",
    "red", "Red", "red!", "dark red", "dark-red", "red, white", "red,white", "red/white", "the red one", "a red",
    "dog", "dogs", "the dog", "a dog", "an dog", "Dog?", "(dog)", "dog's", "dogs'", "man's", "mans", "man 's",
    "dont", "don't", "cant", "can't", "isnt", "its", "it's", "youre", "t-shirt", "tshirt", "t shirt",
    "left", "left side", "on the left", "12:30", "o'clock", "oclock", "50%", "@home", "a.m.", "e.g.",
    "stop", "STOP", "stop sign", "nous les gosses", "dakota", "dakota digital", "", "  spaced   out ", "new\nline",
]  # fmt: skip
HUMAN = [
    "yes", "no", "2", "two", "10", "3.5", "1,000", "1000", "red", "dark red", "red!", "Red", "dog", "dogs",
    "the dog", "man's", "don't", "t-shirt", "tshirt", "left", "stop", "stop sign", "dakota", "12:30",
]  # fmt: skip


def official_file(relative: str) -> Path:
    path = Path(OFFICIAL) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: MINILLAVA_OFFICIAL_EVAL_CODE must hold llava-torch 1.2.2.post1 and "
            "salesforce-lavis 1.0.2 (pip install --no-deps --target DIR ...)"
        )
    return path


@functools.cache
def official_module(relative: str):
    """A module of the published code, loaded from its file (its package's `__init__` is not run)."""
    path = official_file(relative)
    spec = importlib.util.spec_from_file_location(f"official_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# `llava` as a bare package over the unpacked files: its scripts import `llava.eval.*` as published.
BOOTSTRAP = (
    "import runpy, sys, types; package = types.ModuleType('llava'); package.__path__ = [sys.argv[1] + '/llava']; "
    "sys.modules['llava'] = package; sys.argv = sys.argv[2:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_official_script(relative: str, *args) -> str:
    script = official_file(relative)
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, OFFICIAL, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{relative} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def human_answers(rng: random.Random) -> list[str]:
    """Ten annotator answers: mostly one answer with some dissent, sometimes all alike."""
    main = rng.choice(HUMAN)
    if rng.random() < 0.2:
        return [main] * 10
    return [main if rng.random() < 0.55 else rng.choice(HUMAN) for _ in range(10)]


def prediction(rng: random.Random, answers: list[str]) -> str:
    """A model's answer: often a respelling of what the annotators said, else anything."""
    if rng.random() < 0.6:
        base = rng.choice(answers)
        return rng.choice([base, base.upper(), base.capitalize(), base + ".", "The " + base, base + "!", " " + base])
    return rng.choice(SPELLINGS)


# ----------------------------------------------------------------------------------------------------------------
# the answer processor


def test_normalize_answer_equals_llava_m4c_answer_processor():
    processor = official_module("llava/eval/m4c_evaluator.py").EvalAIAnswerProcessor()
    rng = random.Random(0)
    texts = SPELLINGS + HUMAN + list(processor.CONTRACTIONS) + list(processor.NUMBER_MAP) + ["." * 40 + "a", "a" * 5]
    texts += [" ".join(rng.choice(SPELLINGS + HUMAN) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
    texts += [text.upper() for text in texts[:200]]
    differing = {
        text: (normalize_answer(text), processor(text)) for text in texts if normalize_answer(text) != processor(text)
    }
    assert not differing, differing
    assert len(set(texts)) > 1000


def test_vqa_accuracy_equals_textvqa_accuracy_evaluator():
    evaluator = official_module("llava/eval/m4c_evaluator.py").TextVQAAccuracyEvaluator()
    rng = random.Random(1)
    for _ in range(500):
        answers = human_answers(rng)
        predicted = prediction(rng, answers)
        expected = evaluator.eval_pred_list([{"pred_answer": predicted, "gt_answers": answers}])
        assert vqa_accuracy(predicted, answers) == pytest.approx(expected, abs=1e-12), (predicted, answers)


# ----------------------------------------------------------------------------------------------------------------
# VQAv2: LLaVA's submission file scored by the official vqaEval.py


def vqav2_files(folder: Path, rng: random.Random, count: int = 300):
    annotations, questions, llava_questions, raw = [], [], [], {}
    types = [("what color", "other"), ("how many", "number"), ("is the", "yes/no"), ("what is", "other")]
    for question_id in range(1, count + 1):
        image_id = 1000 + question_id // 3
        question_type, answer_type = rng.choice(types)
        answers = human_answers(rng)
        annotations.append(
            {
                "question_id": question_id,
                "image_id": image_id,
                "question_type": question_type,
                "answer_type": answer_type,
                "multiple_choice_answer": max(set(answers), key=answers.count),
                "answers": [
                    {"answer": answer, "answer_confidence": "yes", "answer_id": i + 1}
                    for i, answer in enumerate(answers)
                ],
            }
        )
        text = f"{question_type} thing {question_id}?"
        questions.append({"question_id": question_id, "image_id": image_id, "question": text})
        image = f"COCO_val2014_{image_id:012d}.jpg"
        llava_questions.append({"question_id": question_id, "image": image, "text": f"{text}\n{SHORT}"})
        raw[question_id] = (f"{text}\n{SHORT}", prediction(rng, answers))
    header = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"}
    annotation_file = write_json(folder / "v2_mscoco_val2014_annotations.json", {**header, "annotations": annotations})
    question_file = write_json(
        folder / "v2_OpenEnded_mscoco_val2014_questions.json",
        {**header, "task_type": "Open-Ended", "questions": questions},
    )
    llava_question_file = write_jsonl(folder / "llava_vqav2_val.jsonl", llava_questions)
    return annotation_file, question_file, llava_question_file, raw


def test_vqav2_equals_official_vqa_eval_on_the_submission_file(tmp_path):
    rng = random.Random(2)
    annotation_file, question_file, llava_question_file, raw = vqav2_files(tmp_path, rng)
    # a few questions left unanswered: the submission says "" for them, as convert_vqav2_for_submission.py does
    answered = {qid: item for qid, item in raw.items() if qid % 37}
    answers = answers_file(tmp_path / "answers.jsonl", [(qid, t, p) for qid, (p, t) in answered.items()])
    submission = tmp_path / "submission.json"
    write_vqav2_submission(answers, llava_question_file, submission)

    # the submission's answers are LLaVA's: each processed by m4c_evaluator's EvalAIAnswerProcessor
    processor = official_module("llava/eval/m4c_evaluator.py").EvalAIAnswerProcessor()
    written = {entry["question_id"]: entry["answer"] for entry in json.loads(submission.read_text())}
    assert written == {qid: processor(answered[qid][1]) if qid in answered else "" for qid in raw}

    vqa_api = official_module("lavis/common/vqa_tools/vqa.py")
    vqa_eval = official_module("lavis/common/vqa_tools/vqa_eval.py")
    vqa = vqa_api.VQA(str(annotation_file), str(question_file))
    official = vqa_eval.VQAEval(vqa, vqa.loadRes(str(submission), str(question_file)), n=2)
    official.evaluate()

    ours = evaluate("vqav2", answers, annotation_file)
    assert round(ours["overall"], 2) == official.accuracy["overall"]
    assert {kind: round(value, 2) for kind, value in ours["metrics"]["per_answer_type"].items()} == official.accuracy[
        "perAnswerType"
    ]
    annotations = formats.read_vqa_annotations(annotation_file)
    server = {
        qid: round(100 * scorers.vqa_server_accuracy(text, annotations[str(qid)].answers), 2)
        for qid, (_, text) in answered.items()
    }
    assert server == {qid: official.evalQA[qid] for qid in answered}
    # TextVQA's symmetric normalisation gives other figures on these answers: the comparison can tell them apart
    symmetric = {
        qid: round(100 * vqa_accuracy(text, annotations[str(qid)].answers), 2) for qid, (_, text) in answered.items()
    }
    assert symmetric != server
    assert 0 < ours["metrics"]["num_missing"] < 10


# ----------------------------------------------------------------------------------------------------------------
# TextVQA: LLaVA's eval_textvqa.py


def test_textvqa_equals_llava_eval_textvqa(tmp_path):
    rng = random.Random(3)
    data, records = [], []
    for number in range(200):
        image_id = f"{number // 4:016x}"
        question = f"what is written on thing {number}?"
        answers = human_answers(rng)
        data.append({"question_id": 30000 + number, "image_id": image_id, "question": question, "answers": answers})
        if number % 3 == 0:
            prompt = f"{question.capitalize()}\nReference OCR token: STOP, 12:30\n{SHORT}"
        elif number % 3 == 1:
            prompt = f"Reference OCR token: DAKOTA\n{question}\n{SHORT}"
        else:
            prompt = f"{question}\n{SHORT}"
        records.append((image_id, prediction(rng, answers), prompt))
    annotation_file = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})
    answers = answers_file(tmp_path / "llava-v1.5.jsonl", records)

    printed = run_official_script(
        "llava/eval/eval_textvqa.py", "--annotation-file", annotation_file, "--result-file", answers
    )
    official = float(re.search(r"Accuracy: (\d+\.\d+)%", printed).group(1))
    ours = evaluate("textvqa", answers, annotation_file)
    assert ours["metrics"]["num_questions"] == 200 and ours["num_unmatched_answers"] == 0
    assert round(ours["overall"], 2) == official
    assert 10 < official < 90  # the draws are neither all right nor all wrong


# ----------------------------------------------------------------------------------------------------------------
# POPE: LLaVA's eval_pope.py


POPE_ANSWERS = [
    "Yes", "yes", "Yes, there is a dog in the image.", "No", "no", "No, there is not.", "There is no dog.",
    "I do not see one.", "NO", "Not really", "nope", "Yes. No.", "Maybe, not sure", "It is not, no.", "Yes it is",
]  # fmt: skip


def test_pope_equals_llava_eval_pope(tmp_path):
    rng = random.Random(4)
    annotations = tmp_path / "coco"
    annotations.mkdir()
    questions, records = [], []
    for offset, split in enumerate(("adversarial", "popular", "random")):
        labels = []
        for number in range(1, 61):
            label = "yes" if rng.random() < 0.5 else "no"
            image = f"COCO_val2014_{number:012d}.jpg"
            text = f"Is there a {split} {number} in the image?"
            labels.append({"question_id": number, "image": image, "text": text, "label": label})
            # LLaVA's llava_pope_test.jsonl: one id space over the three splits, `category` naming the split
            question_id = 10000 * offset + number
            questions.append({"question_id": question_id, "image": image, "text": text, "category": split})
            records.append((question_id, rng.choice(POPE_ANSWERS), text))
        write_jsonl(annotations / f"coco_pope_{split}.json", labels)
    question_file = write_jsonl(tmp_path / "llava_pope_test.jsonl", questions)
    answers = answers_file(tmp_path / "answers.jsonl", records)

    printed = run_official_script(
        "llava/eval/eval_pope.py",
        "--annotation-dir",
        annotations,
        "--question-file",
        question_file,
        "--result-file",
        answers,
    )
    names = {
        "Accuracy": "accuracy",
        "Precision": "precision",
        "Recall": "recall",
        "F1 score": "f1",
        "Yes ratio": "yes_ratio",
    }
    official: dict[str, dict[str, float]] = {}
    for block in printed.split("Category: ")[1:]:
        split = block.split(",", 1)[0]
        official[split] = {
            names[name]: float(value)
            for name, value in re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (.+)$", block, re.M)
        }
        tp, fp, tn, fn = map(int, re.search(r"TP\tFP\tTN\tFN\t\n(\d+)\t(\d+)\t(\d+)\t(\d+)", block).groups())
        official[split].update(tp=tp, fp=fp, tn=tn, fn=fn)
    ours = evaluate("pope", answers, annotations, questions=question_file)
    assert set(official) == set(ours["metrics"]["per_split"]) == {"adversarial", "popular", "random"}
    for split, metrics in official.items():
        assert {name: ours["metrics"]["per_split"][split][name] for name in metrics} == pytest.approx(
            metrics, abs=1e-12
        )
    assert ours["overall"] == pytest.approx(100 * sum(m["f1"] for m in official.values()) / 3)


# ----------------------------------------------------------------------------------------------------------------
# ScienceQA: LLaVA's eval_science_qa.py


def science_answer(rng: random.Random, right: str) -> str:
    """The answer shapes that release's script and the current one read alike, naming the right letter half the
    time."""
    letter = right if rng.random() < 0.5 else rng.choice("ABCDEF")
    return rng.choice(
        [
            letter,
            f"{letter}. {rng.choice(['iron', 'a whale', 'Paris'])}",
            f"The answer is {letter}.",
            f"Look at the picture. The answer is {letter}.",
            f"The answer is {letter}, because it is.",
            "I am not sure.",
            f"{letter}.",
            f"Answer: {letter}",
        ]
    )


def test_scienceqa_equals_llava_eval_science_qa(tmp_path):
    rng = random.Random(5)
    base = tmp_path / "scienceqa"
    base.mkdir()
    problems, records = {}, []
    for number in range(1, 201):
        pid = str(number)
        choices = [f"choice {i}" for i in range(rng.randint(2, 5))]
        has_image = rng.random() < 0.6
        problems[pid] = {
            "question": f"Question {number}?",
            "choices": choices,
            "answer": rng.randrange(len(choices)),
            "image": "image.png" if has_image else None,
            "split": "test",
            "hint": "",
        }
        prompt = ("<image>\n" if has_image else "") + f"Question {number}?\nA. choice 0\nB. choice 1"
        records.append((pid, science_answer(rng, "ABCDE"[problems[pid]["answer"]]), prompt))
    write_json(base / "problems.json", problems)
    write_json(base / "pid_splits.json", {"train": [], "val": [], "test": list(problems)})
    answers = answers_file(tmp_path / "answers.jsonl", records)

    printed = run_official_script(
        "llava/eval/eval_science_qa.py",
        "--base-dir",
        base,
        "--result-file",
        answers,
        "--output-file",
        tmp_path / "output.json",
        "--output-result",
        tmp_path / "result.json",
    )
    official = json.loads((tmp_path / "result.json").read_text())
    parsed = {pid: scorers.parse_scienceqa_answer(text, len(problems[pid]["choices"])) for pid, text, _ in records}
    assert parsed == official["results"]
    ours = evaluate("scienceqa", answers, base)
    assert ours["metrics"]["accuracy"] == pytest.approx(official["acc"], abs=1e-9)
    img = float(re.search(r"IMG-Accuracy: (\d+\.\d+)%", printed).group(1))
    assert round(ours["overall"], 2) == img
    assert ours["metrics"]["num_questions"] == official["count"] == 200
    assert 0 < official["correct"] < 200
