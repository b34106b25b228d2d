"""LLaVA-1.5's evaluation protocol: the benchmark registry, the paper's response-format prompts, matching a model's
answers to a benchmark's annotations, and the results and submission files.

```python
>>> from minillava.train.eval import BENCHMARKS, add_response_prompt
>>> add_response_prompt("What colour is the bus?", "gqa")
'What colour is the bus?\\nAnswer the question using a single word or phrase.'
>>> BENCHMARKS["pope"].overall
'F1 (%) averaged over the POPE splits'

```

[`evaluate`] scores an answers file (LLaVA's answer JSONL) against a benchmark's official annotation file and
returns the results that [`write_results`] saves as `results.json`; [`write_vqav2_submission`] and
[`write_vizwiz_submission`] write the files their evaluation servers take.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import formats, scorers
from .formats import Answer, EvalFileError, PathLike, Question


# ----------------------------------------------------------------------------------------------------------------
# response-format prompts

# The LLaVA-1.5 paper's Table 8 ("Response format prompt for evaluation"), verbatim.
PAPER_EVAL_PROMPTS: dict[tuple[str, ...], str | None] = {
    ("LLaVA-Bench", "MM-Vet"): None,
    ("VQAv2", "GQA", "TextVQA", "MME", "POPE"): "Answer the question using a single word or phrase.",
    ("ScienceQA", "MMBench", "SEED-Bench"): "Answer with the option’s letter from the given choices directly.",
    ("VizWiz",): "When the provided information is insufficient, respond with ‘Unanswerable’. "
    "Answer the question using a single word or phrase.",
}
# The paper's Table 7 (the instruction-following data mixture): each source's size and response-format prompts
# (RefCOCO and VG share the note "randomly choose between the two formats" and its two prompts).
PAPER_TRAINING_PROMPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "LLaVA": ("158K", ()),
    "ShareGPT": ("40K", ()),
    "VQAv2": ("83K", ("Answer the question using a single word or phrase.",)),
    "GQA": ("72K", ("Answer the question using a single word or phrase.",)),
    "OKVQA": ("9K", ("Answer the question using a single word or phrase.",)),
    "OCRVQA": ("80K", ("Answer the question using a single word or phrase.",)),
    "A-OKVQA": ("50K", ("Answer with the option’s letter from the given choices directly.",)),
    "TextCaps": ("22K", ("Provide a one-sentence caption for the provided image.",)),
    "RefCOCO": (
        "30K",
        (
            "Provide a short description for this region.",
            "Provide the bounding box coordinate of the region this sentence describes.",
        ),
    ),
    "VG": (
        "86K",
        (
            "Provide a short description for this region.",
            "Provide the bounding box coordinate of the region this sentence describes.",
        ),
    ),
}
# The prompts as LLaVA's released eval question files spell them (ASCII apostrophes; VizWiz's on two lines): the
# paper's wording up to typography, which is what [`add_response_prompt`] appends.
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
VIZWIZ_PROMPT = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT_ANSWER_PROMPT
RESPONSE_PROMPTS = (VIZWIZ_PROMPT, SHORT_ANSWER_PROMPT, MULTIPLE_CHOICE_PROMPT)


def _loose(text: str) -> str:
    """Text compared up to typography: curly quotes as straight ones, whitespace collapsed, case folded."""
    for curly, straight in (("‘", "'"), ("’", "'"), ("“", '"'), ("”", '"')):
        text = text.replace(curly, straight)
    return " ".join(text.split()).casefold()


def _ending(prompt: str) -> re.Pattern:
    """`prompt` at the end of a text, up to typography (quotes, whitespace, case)."""
    words = [re.escape(word).replace("'", "['‘’]") for word in prompt.split()]
    return re.compile(r"\s*" + r"\s+".join(words) + r"\s*$", re.IGNORECASE)


def add_response_prompt(text: str, benchmark: str | Benchmark) -> str:
    """`text` with the benchmark's response-format prompt on a new line after it, as LLaVA's eval files have it.

    A question that already holds the prompt (LLaVA's released question files do, up to typography and line
    breaks) is returned unchanged; one that ends with another benchmark's prompt (a short-answer prompt where VizWiz
    wants its own) has that ending replaced.
    """
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    prompt = benchmark.prompt
    if prompt is None or _loose(prompt) in _loose(text):
        return text
    for other in RESPONSE_PROMPTS:
        text, replaced = _ending(other).subn("", text, count=1)
        if replaced:
            break
    return f"{text}\n{prompt}"


# ----------------------------------------------------------------------------------------------------------------
# matching answers to annotations


class EvalError(ValueError):
    """Answers that cannot be scored against the annotations given; the message says why and what to pass."""


Matched = tuple[dict[Any, str], list[Answer]]


def _add(predictions: dict, sources: dict, key: Any, answer: Answer) -> None:
    if key in predictions:
        raise EvalError(f"two answers for the same question {key!r}: {sources[key]} and {answer.source}")
    predictions[key] = answer.text
    sources[key] = answer.source


def match_by_question_id(answers: Sequence[Answer], annotations: Mapping, questions: Mapping | None = None) -> Matched:
    """Answers keyed by `str(question_id)` (VQAv2, GQA, ScienceQA, custom VQA); the rest are unmatched."""
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    unmatched = []
    for answer in answers:
        key = str(answer.question_id)
        if key in annotations:
            _add(predictions, sources, key, answer)
        else:
            unmatched.append(answer)
    return predictions, unmatched


def match_textvqa(
    answers: Sequence[Answer],
    annotations: Mapping[str, formats.VQAAnnotation],
    questions: Mapping[str, Question] | None = None,
) -> Matched:
    """TextVQA answers: by TextVQA's question id, or, as LLaVA's `eval_textvqa.py`, by the image id its question
    files use as `question_id` together with the question read from the answer's `prompt` ([`textvqa_question`])."""
    by_image_question = {
        (annotation.image, annotation.question.strip().lower()): key
        for key, annotation in annotations.items()
        if annotation.image is not None and annotation.question
    }
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    unmatched = []
    for answer in answers:
        key = str(answer.question_id)
        if key not in annotations:
            prompt = answer.prompt
            if prompt is None and questions is not None and key in questions:
                prompt = questions[key].text
            question = formats.textvqa_question(prompt).lower() if prompt else None
            key = by_image_question.get((key, question))
        if key is None:
            unmatched.append(answer)
        else:
            _add(predictions, sources, key, answer)
    return predictions, unmatched


def match_vizwiz(
    answers: Sequence[Answer],
    annotations: Mapping[str, formats.VQAAnnotation],
    questions: Mapping[str, Question] | None = None,
) -> Matched:
    """VizWiz answers by image: LLaVA's VizWiz questions are numbered, the question file names each one's image."""
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    unmatched = []
    for answer in answers:
        key = str(answer.question_id)
        if key not in annotations and questions is not None and key in questions and questions[key].image:
            key = Path(questions[key].image).name
        if key in annotations:
            _add(predictions, sources, key, answer)
        else:
            unmatched.append(answer)
    return predictions, unmatched


def match_pope(
    answers: Sequence[Answer],
    labels: Mapping[str, list[formats.POPELabel]],
    questions: Mapping[str, Question] | None = None,
) -> Matched:
    """POPE answers keyed `(split, question_id)`. Each answer's split is its question's `category` (LLaVA's
    `llava_pope_test.jsonl`), or the only split given. Within a split, answers whose ids are all among the labels'
    ids match by id; otherwise, when there are as many answers as labels, they match in file order, as LLaVA's
    `eval_pope.py` pairs them."""
    splits = list(labels)
    if len(splits) > 1 and questions is None:
        raise EvalError(
            f"POPE with several splits ({', '.join(splits)}) needs the question file: its 'category' "
            "names each question's split"
        )
    by_split: dict[str, list[Answer]] = {split: [] for split in splits}
    unmatched = []
    for answer in answers:
        question = questions.get(str(answer.question_id)) if questions is not None else None
        split = question.category if question is not None and question.category is not None else None
        if split is None and len(splits) == 1:
            split = splits[0]
        if split in by_split:
            by_split[split].append(answer)
        else:
            unmatched.append(answer)
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    for split, split_answers in by_split.items():
        ids = {label.question_id for label in labels[split]}
        if all(str(answer.question_id) in ids for answer in split_answers):
            for answer in split_answers:
                _add(predictions, sources, (split, str(answer.question_id)), answer)
        elif len(split_answers) == len(labels[split]):
            for answer, label in zip(split_answers, labels[split], strict=True):
                _add(predictions, sources, (split, label.question_id), answer)
        else:
            strangers = sum(str(answer.question_id) not in ids for answer in split_answers)
            raise EvalError(
                f"POPE split {split!r}: {strangers} of its {len(split_answers)} answers have a "
                f"question_id that its labels ({labels[split][0].source.rsplit(':', 1)[0]}) lack, and "
                f"there are not as many answers as its {len(labels[split])} labels to pair them in order"
            )
    return predictions, unmatched


def match_mme(
    answers: Sequence[Answer],
    items: Mapping[tuple[str, str, str], formats.MMEItem],
    questions: Mapping[str, Question] | None = None,
) -> Matched:
    """MME answers keyed by [`mme_key`]: LLaVA's `question_id` is `task/<image file>`, shared by the image's two
    questions, which the answer's `prompt` tells apart."""
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    unmatched = []
    for answer in answers:
        if answer.prompt is None:
            raise EvalError(
                f"{answer.source}: MME answers need their 'prompt' (an image's two questions share its question_id)"
            )
        parts = str(answer.question_id).replace("\\", "/").split("/")
        key = formats.mme_key(parts[0], parts[-1], answer.prompt)
        if len(parts) >= 2 and key in items:
            _add(predictions, sources, key, answer)
        else:
            unmatched.append(answer)
    return predictions, unmatched


def match_mmbench(
    answers: Sequence[Answer], rows: Mapping[str, formats.MMBenchRow], questions: Mapping[str, Question] | None = None
) -> Matched:
    """MMBench answers keyed `(index, round_id)` (round 0 where the answer has none)."""
    predictions: dict[Any, str] = {}
    sources: dict[Any, str] = {}
    unmatched = []
    for answer in answers:
        key = str(answer.question_id)
        if key in rows:
            _add(predictions, sources, (key, answer.round_id or 0), answer)
        else:
            unmatched.append(answer)
    return predictions, unmatched


# ----------------------------------------------------------------------------------------------------------------
# the registry


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of LLaVA-1.5's evaluation: its prompt, what `--answers` takes, its reader, matcher and scorer,
    and what its `overall` figure is."""

    name: str
    title: str
    prompt: str | None
    annotations: str
    overall: str
    read_annotations: Callable[[PathLike], Any]
    match: Callable[[Sequence[Answer], Any, Mapping[str, Question] | None], Matched]
    score: Callable[..., dict]
    needs_questions: bool = False


BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "vqav2",
            "VQAv2",
            SHORT_ANSWER_PROMPT,
            "VQAv2's annotations JSON (v2_mscoco_*_annotations.json)",
            "VQA accuracy (%)",
            formats.read_vqa_annotations,
            match_by_question_id,
            scorers.score_vqav2,
        ),
        Benchmark(
            "gqa",
            "GQA",
            SHORT_ANSWER_PROMPT,
            "GQA's balanced questions JSON (testdev_balanced_questions.json)",
            "accuracy (%) on the balanced questions",
            formats.read_gqa_questions,
            match_by_question_id,
            scorers.score_gqa,
        ),
        Benchmark(
            "textvqa",
            "TextVQA",
            SHORT_ANSWER_PROMPT,
            "TextVQA's annotations JSON (TextVQA_0.5.1_val.json)",
            "VQA accuracy (%)",
            formats.read_vqa_annotations,
            match_textvqa,
            scorers.score_textvqa,
        ),
        Benchmark(
            "vizwiz",
            "VizWiz",
            VIZWIZ_PROMPT,
            "VizWiz's annotations JSON (val.json)",
            "VQA accuracy (%)",
            formats.read_vizwiz_annotations,
            match_vizwiz,
            scorers.score_vizwiz,
            needs_questions=True,
        ),
        Benchmark(
            "pope",
            "POPE",
            SHORT_ANSWER_PROMPT,
            "POPE's coco_pope_*.json label file, or their folder",
            "F1 (%) averaged over the POPE splits",
            formats.read_pope_annotations,
            match_pope,
            scorers.score_pope,
        ),
        Benchmark(
            "mme",
            "MME",
            SHORT_ANSWER_PROMPT,
            "MME's MME_Benchmark_release_version folder",
            "perception score (sum of acc + acc+ over the 10 perception tasks)",
            formats.read_mme_annotations,
            match_mme,
            scorers.score_mme,
        ),
        Benchmark(
            "mmbench",
            "MMBench",
            MULTIPLE_CHOICE_PROMPT,
            "MMBench's dev TSV (mmbench_dev_*.tsv)",
            "CircularEval accuracy (%)",
            formats.read_mmbench_tsv,
            match_mmbench,
            scorers.score_mmbench,
        ),
        Benchmark(
            "scienceqa",
            "ScienceQA-IMG",
            MULTIPLE_CHOICE_PROMPT,
            "ScienceQA's problems.json (pid_splits.json beside it)",
            "accuracy (%) on the test problems with an image",
            formats.read_scienceqa_problems,
            match_by_question_id,
            scorers.score_scienceqa,
        ),
        Benchmark(
            "vqa",
            "custom VQA",
            SHORT_ANSWER_PROMPT,
            "a JSONL of question_id with answer or answers (the question file itself will do)",
            "VQA accuracy (%) where every question has 10 answers, else exact match (%)",
            formats.read_vqa_jsonl,
            match_by_question_id,
            scorers.score_vqa,
        ),
    )
}


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark `name` (case-insensitive)."""
    try:
        return BENCHMARKS[name.lower()]
    except KeyError:
        raise EvalError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}") from None


# ----------------------------------------------------------------------------------------------------------------
# scoring files


def _answers(answers: PathLike | Sequence[Answer]) -> tuple[list[Answer], str]:
    if isinstance(answers, str | os.PathLike):
        return formats.read_answers(answers), str(answers)
    return list(answers), "the answers"


def _questions(questions: PathLike | Sequence[Question] | None) -> dict[str, Question] | None:
    if questions is None:
        return None
    if isinstance(questions, str | os.PathLike):
        questions = formats.read_questions(questions)
    return formats.by_question_id(questions)


def evaluate(
    benchmark: str | Benchmark,
    answers: PathLike | Sequence[Answer],
    annotations: PathLike | Any,
    questions: PathLike | Sequence[Question] | None = None,
    skip_missing: bool = False,
) -> dict[str, Any]:
    """Score a model's answers (LLaVA's answer JSONL, or [`Answer`]s) against a benchmark's annotations (a path, or
    what its reader returns); `questions` (LLaVA's question file) is needed by VizWiz and by POPE with several
    splits. Returns `{"benchmark", "overall", "overall_metric", "metrics", ...}` for [`write_results`].

    Questions without an answer count as wrong unless `skip_missing`; answers that match no annotated question are
    counted in `num_unmatched_answers` and left out, and none matching at all is an error.
    """
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    answer_list, answers_name = _answers(answers)
    annotations_name = str(annotations) if isinstance(annotations, str | os.PathLike) else "the annotations"
    parsed = benchmark.read_annotations(annotations) if isinstance(annotations, str | os.PathLike) else annotations
    question_map = _questions(questions)
    if benchmark.needs_questions and question_map is None:
        ids_are_keys = any(str(answer.question_id) in parsed for answer in answer_list)
        if not ids_are_keys:
            raise EvalError(
                f"{benchmark.title} needs the question file to match its answers to the annotations "
                "(the question file names each question's image)"
            )
    predictions, unmatched = benchmark.match(answer_list, parsed, question_map)
    if answer_list and not predictions:
        example = answer_list[0]
        raise EvalError(
            f"none of the {len(answer_list)} answers in {answers_name} matches a question of "
            f"{annotations_name} ({benchmark.annotations} expected); the first answer is for "
            f"question_id {example.question_id!r} ({example.source})"
        )
    metrics = benchmark.score(predictions, parsed, skip_missing=skip_missing)
    return {
        "benchmark": benchmark.name,
        "overall": metrics["overall"],
        "overall_metric": _overall_metric(benchmark, metrics),
        "metrics": {key: value for key, value in metrics.items() if key not in ("overall", "overall_metric")},
        "num_answers": len(answer_list),
        "num_unmatched_answers": len(unmatched),
        "unmatched_examples": [str(answer.question_id) for answer in unmatched[:5]],
        "answers_file": answers_name,
        "annotations": annotations_name,
        "skip_missing": skip_missing,
    }


def _overall_metric(benchmark: Benchmark, metrics: Mapping[str, Any]) -> str:
    if metrics.get("overall_metric") == "vqa_accuracy":
        return "VQA accuracy (%)"
    if metrics.get("overall_metric") == "exact_match":
        return "exact match (%)"
    if metrics.get("overall_subset") == "all":
        return "accuracy (%) on all the problems (none has an image)"
    return benchmark.overall


def write_results(results: Mapping[str, Any], output_dir: PathLike) -> Path:
    """Write `results.json` (the output of [`evaluate`]) into `output_dir`; returns its path."""
    path = Path(output_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------------
# submission files


def _predictions(answers: PathLike | Sequence[Answer] | Mapping) -> dict[str, str]:
    if isinstance(answers, Mapping):
        return {str(key): text for key, text in answers.items()}
    answer_list, _ = _answers(answers)
    return {str(answer.question_id): answer.text for answer in answer_list}


def write_vqav2_submission(
    answers: PathLike | Sequence[Answer] | Mapping, questions: PathLike | Sequence[Question], path: PathLike
) -> dict[str, int]:
    """The VQAv2 test-dev (or test) file EvalAI takes: `[{"question_id": int, "answer": str}]`, one entry per
    question of the question file in its order, the answer [`normalize_answer`]ed and `""` where there is none (as
    LLaVA's `scripts/convert_vqav2_for_submission.py`). Returns the counts of answered and missing questions."""
    predictions = _predictions(answers)
    question_list = formats.read_questions(questions) if isinstance(questions, str | os.PathLike) else questions
    entries = []
    missing = 0
    for question in question_list:
        try:
            question_id = int(question.question_id)
        except ValueError:
            raise EvalError(
                f"{question.source}: VQAv2 question ids are integers, got {question.question_id!r}"
            ) from None
        text = predictions.get(str(question.question_id))
        missing += text is None
        entries.append({"question_id": question_id, "answer": "" if text is None else scorers.normalize_answer(text)})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(entries), encoding="utf-8")
    return {"num_questions": len(entries), "num_answered": len(entries) - missing, "num_missing": missing}


def write_vizwiz_submission(
    answers: PathLike | Sequence[Answer] | Mapping, questions: PathLike | Sequence[Question], path: PathLike
) -> dict[str, int]:
    """The VizWiz file EvalAI takes: `[{"image": str, "answer": str}]` per question of the question file, answers
    [`normalize_answer`]ed (as LLaVA's `scripts/convert_vizwiz_for_submission.py`, which refuses missing answers)."""
    predictions = _predictions(answers)
    question_list = formats.read_questions(questions) if isinstance(questions, str | os.PathLike) else questions
    missing = [question for question in question_list if str(question.question_id) not in predictions]
    if missing:
        raise EvalError(
            f"{len(missing)} VizWiz question(s) have no answer, e.g. {missing[0].question_id!r} "
            f"({missing[0].source}): the server wants one for every image"
        )
    entries = []
    for question in question_list:
        if not question.image:
            raise EvalError(f"{question.source}: a VizWiz question needs its 'image'")
        entries.append(
            {
                "image": Path(question.image).name,
                "answer": scorers.normalize_answer(predictions[str(question.question_id)]),
            }
        )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(entries), encoding="utf-8")
    return {"num_questions": len(entries), "num_answered": len(entries), "num_missing": 0}


__all__ = [
    "BENCHMARKS",
    "MULTIPLE_CHOICE_PROMPT",
    "PAPER_EVAL_PROMPTS",
    "PAPER_TRAINING_PROMPTS",
    "RESPONSE_PROMPTS",
    "SHORT_ANSWER_PROMPT",
    "VIZWIZ_PROMPT",
    "Benchmark",
    "EvalError",
    "EvalFileError",
    "add_response_prompt",
    "evaluate",
    "get_benchmark",
    "match_by_question_id",
    "match_mmbench",
    "match_mme",
    "match_pope",
    "match_textvqa",
    "match_vizwiz",
    "write_results",
    "write_vizwiz_submission",
    "write_vqav2_submission",
]
