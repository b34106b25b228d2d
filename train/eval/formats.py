"""Readers for the files LLaVA-1.5's evaluation runs on: LLaVA's eval question and answer files, and each benchmark's
own annotation files.

| reader | reads |
|---|---|
| [`read_questions`] | LLaVA's eval question JSONL (`question_id`, `image`, `text`, optional `category`), or its ScienceQA `llava_test_CQM-A.json` (`id`, `image`, `conversations`) |
| [`read_answers`] | LLaVA's answer JSONL (`question_id`, `text`; `prompt`, `answer_id`, `model_id`, `round_id`, `metadata` may be there too) |
| [`read_vqa_annotations`] | VQAv2's `v2_mscoco_*_annotations.json` (`annotations`, 10 answers each) and TextVQA's `TextVQA_0.5.1_val.json` (`data`) |
| [`read_vizwiz_annotations`] | VizWiz's `val.json` (a list, one question per image) |
| [`read_vqa_jsonl`] | any JSONL / JSON list of `question_id` with `answer` or `answers` (the generic `vqa` benchmark) |
| [`read_gqa_questions`] | GQA's `*_balanced_questions.json` |
| [`read_pope_annotations`] | POPE's `coco_pope_{random,popular,adversarial}.json` lines with `label` (a file or their folder) |
| [`read_mme_annotations`] | MME's `MME_Benchmark_release_version/` task folders (`question<TAB>Yes/No` text files) |
| [`read_mmbench_tsv`] | MMBench's TSV (`index`, `question`, `hint`, `A`..`D`, `answer`, `category`, `l2-category`, `split`) |
| [`read_scienceqa_problems`] | ScienceQA's `problems.json` with `pid_splits.json` beside it |

A file that cannot be used raises [`EvalFileError`], which names the file, the line or record, and what is wrong.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


PathLike = str | os.PathLike
ANSWER_LETTERS = "ABCDEFGHIJ"
# MME's 14 sub-tasks: 10 perception and 4 cognition tasks, scored as two totals.
MME_PERCEPTION_TASKS = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION_TASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_TASKS = MME_PERCEPTION_TASKS + MME_COGNITION_TASKS
# MMBench's circular variants of a question are rows whose index is the question's plus a multiple of 10^6.
MMBENCH_CIRCULAR_OFFSET = 1_000_000
_MMBENCH_NONE = {"", "nan", "none"}  # the empty cells of MMBench's TSV (pandas reads them as NaN)


class EvalFileError(ValueError):
    """An evaluation file that cannot be used: the message names the file, where in it, and what is wrong."""

    def __init__(self, path: PathLike, message: str, where: str | None = None):
        self.path = str(path)
        self.where = where
        super().__init__(f"{path}: {where}: {message}" if where else f"{path}: {message}")


@dataclass(frozen=True)
class Question:
    """One question of LLaVA's eval question file; `round_id` numbers MMBench's option rotations."""

    question_id: str | int
    text: str
    image: str | None = None
    category: str | None = None
    round_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class Answer:
    """One line of LLaVA's answer JSONL: the model's `text` for `question_id` (and the `prompt` it was asked)."""

    question_id: str | int
    text: str
    prompt: str | None = None
    round_id: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class VQAAnnotation:
    """A VQA-style question with its human answers (10 for VQAv2, TextVQA and VizWiz)."""

    question_id: str
    answers: tuple[str, ...]
    answer_type: str | None = None
    question_type: str | None = None
    image: str | None = None
    question: str | None = None


@dataclass(frozen=True)
class GQAQuestion:
    """A GQA question: its answer and the types its accuracy is broken down by."""

    question_id: str
    answer: str
    is_balanced: bool = True
    structural: str | None = None
    semantic: str | None = None


@dataclass(frozen=True)
class POPELabel:
    """A line of a `coco_pope_*.json` file."""

    question_id: str
    label: str  # "yes" or "no"
    image: str | None = None
    text: str | None = None
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class MMEItem:
    """A question of MME: two per image, each answered yes or no."""

    task: str
    image: str  # the image's file name without its extension (the name of its question file)
    question: str
    answer: str  # "yes" or "no"
    source: str = field(default="", compare=False)


@dataclass(frozen=True)
class MMBenchRow:
    """A row of MMBench's TSV; rows with `index >= 10**6` are circular variants of row `index % 10**6`."""

    index: int
    question: str
    options: tuple[str, ...]
    answer: str | None = None
    hint: str | None = None
    category: str | None = None
    l2_category: str | None = None
    split: str | None = None
    image_base64: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SQAProblem:
    """A ScienceQA problem: its choices, the index of the right one, and whether it has an image."""

    question_id: str
    choices: tuple[str, ...]
    answer: int
    has_image: bool
    question: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _is_id(value: Any) -> bool:
    return isinstance(value, str | int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _load_json(path: PathLike) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise EvalFileError(path, "no such file") from None
    except UnicodeDecodeError as error:
        raise EvalFileError(path, f"not UTF-8 ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise EvalFileError(
            path, f"not valid JSON ({error.msg})", f"line {error.lineno}, column {error.colno}"
        ) from None


def _records(path: PathLike) -> Iterator[tuple[str, dict]]:
    """`(where, record)` for each object of a JSONL file (blank lines skipped) or of a JSON list."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise EvalFileError(path, "no such file") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.lstrip()[:1] == b"[":
        records = _load_json(path)
        for number, record in enumerate(records, 1):
            where = f"record {number}"
            if not isinstance(record, dict):
                raise EvalFileError(path, f"expected a JSON object, got {_type_name(record)}", where)
            yield where, record
        return
    for number, line in enumerate(raw.split(b"\n"), 1):
        where = f"line {number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise EvalFileError(path, f"not UTF-8 ({error.reason} at byte {error.start} of the line)", where) from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise EvalFileError(path, f"not valid JSON ({error.msg}, column {error.colno})", where) from None
        if not isinstance(record, dict):
            raise EvalFileError(path, f"expected a JSON object, got {_type_name(record)}", where)
        yield where, record


_KINDS: dict[Any, str] = {
    "id": "a string or an integer",
    str: "a string",
    int: "an integer",
    list: "a list",
    dict: "an object",
}


def _is_kind(value: Any, kind: Any) -> bool:
    if kind == "id":
        return _is_id(value)
    return isinstance(value, kind) and not isinstance(value, bool)


def _get(path: PathLike, where: str, record: Mapping, key: str, kind: Any, required: bool = True) -> Any:
    """`record[key]`, checked to be of `kind` (`"id"`: a string or an integer); `None` when absent (or null) and not
    `required`."""
    if key not in record or (not required and record[key] is None):
        if required:
            raise EvalFileError(path, f"missing {key!r}", where)
        return None
    value = record[key]
    if not _is_kind(value, kind):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise EvalFileError(path, f"{key!r} must be {_KINDS[kind]}, got {_type_name(value)} {shown}", where)
    return value


def _human_answers(path: PathLike, where: str, record: Mapping) -> tuple[str, ...]:
    """The `answers` of a VQA-style record: a list of strings or of `{"answer": str}` objects."""
    answers = _get(path, where, record, "answers", list)
    out = []
    for number, answer in enumerate(answers):
        if isinstance(answer, dict):
            answer = answer.get("answer")
        if not isinstance(answer, str):
            raise EvalFileError(
                path, f"answers[{number}] must be a string or {{'answer': string}}, got {_type_name(answer)}", where
            )
        out.append(answer)
    if not out:
        raise EvalFileError(path, "'answers' is empty", where)
    return tuple(out)


def _put(out: dict, key: Any, value: Any, path: PathLike, where: str, seen: dict, what: str = "question_id") -> None:
    if key in out:
        raise EvalFileError(path, f"duplicate {what} {key!r} (first at {seen[key]})", where)
    out[key] = value
    seen[key] = where


# ----------------------------------------------------------------------------------------------------------------
# LLaVA's question and answer files


QUESTION_TYPE_KEYS = ("question_type", "type", "category")


def _question_type(path: PathLike, where: str, record: Mapping) -> str | None:
    """A record's own question type: its first of [`QUESTION_TYPE_KEYS`] that is set."""
    for key in QUESTION_TYPE_KEYS:
        value = _get(path, where, record, key, str, required=False)
        if value is not None:
            return value
    return None


def _conversation_answer(path: PathLike, where: str, record: Mapping) -> str:
    """The reference answer of a LLaVA conversation record: its second turn (the first `gpt` reply)."""
    turns = _get(path, where, record, "conversations", list)
    if len(turns) < 2 or not isinstance(turns[1], dict) or not isinstance(turns[1].get("value"), str):
        raise EvalFileError(path, "'conversations' needs a second turn (the answer) holding a string 'value'", where)
    return turns[1]["value"].strip()


def _question_from_conversation(path: PathLike, where: str, record: Mapping) -> Question:
    """A record of LLaVA's ScienceQA question file: the first human turn, `<image>` removed (as model_vqa_science)."""
    question_id = _get(path, where, record, "id", "id")
    turns = _get(path, where, record, "conversations", list)
    if not turns or not isinstance(turns[0], dict) or not isinstance(turns[0].get("value"), str):
        raise EvalFileError(path, "'conversations' must start with a turn holding a string 'value'", where)
    image = _get(path, where, record, "image", str, required=False)
    text = turns[0]["value"].replace("<image>", "").strip()
    return Question(question_id, text, image, _question_type(path, where, record), extra=dict(record),
                    source=f"{path}:{where}")  # fmt: skip


def read_questions(path: PathLike) -> list[Question]:
    """LLaVA's eval question file: JSONL of `question_id`, `text`, `image` (optional), `category` (optional).

    LLaVA conversation JSON (its ScienceQA file, or training-style data: a list of `id`, `image`, `conversations`) is
    read too: a question is its first turn without the `<image>` placeholder, its category the record's `category`
    or `type`.
    """
    questions = []
    for where, record in _records(path):
        if "conversations" in record and "text" not in record:
            questions.append(_question_from_conversation(path, where, record))
            continue
        question_id = _get(path, where, record, "question_id", "id")
        text = _get(path, where, record, "text", str)
        image = _get(path, where, record, "image", str, required=False)
        category = _get(path, where, record, "category", str, required=False)
        round_id = _get(path, where, record, "round_id", int, required=False)
        questions.append(Question(question_id, text, image, category, round_id, dict(record), f"{path}:{where}"))
    return questions


def read_answers(path: PathLike) -> list[Answer]:
    """LLaVA's answer JSONL: `question_id` and `text` on each line (`prompt`, `round_id` used where present)."""
    answers = []
    for where, record in _records(path):
        question_id = _get(path, where, record, "question_id", "id")
        text = _get(path, where, record, "text", str)
        prompt = _get(path, where, record, "prompt", str, required=False)
        round_id = _get(path, where, record, "round_id", int, required=False)
        answers.append(Answer(question_id, text, prompt, round_id, dict(record), f"{path}:{where}"))
    return answers


# ----------------------------------------------------------------------------------------------------------------
# VQAv2, TextVQA, VizWiz and custom VQA


def read_vqa_annotations(path: PathLike) -> dict[str, VQAAnnotation]:
    """VQAv2's annotations JSON (`{"annotations": [...]}`) or TextVQA's (`{"data": [...]}`), keyed by question id."""
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        layout, entries = "annotations", data["annotations"]
    elif isinstance(data, dict) and isinstance(data.get("data"), list):
        layout, entries = "data", data["data"]
    else:
        raise EvalFileError(path, "expected VQAv2's {'annotations': [...]} or TextVQA's {'data': [...]}")
    out: dict[str, VQAAnnotation] = {}
    seen: dict[str, str] = {}
    for number, entry in enumerate(entries):
        where = f"{layout}[{number}]"
        if not isinstance(entry, dict):
            raise EvalFileError(path, f"expected an object, got {_type_name(entry)}", where)
        question_id = str(_get(path, where, entry, "question_id", "id"))
        image = entry.get("image_id")
        annotation = VQAAnnotation(
            question_id=question_id,
            answers=_human_answers(path, where, entry),
            answer_type=_get(path, where, entry, "answer_type", str, required=False),
            question_type=_get(path, where, entry, "question_type", str, required=False),
            image=None if image is None else str(image),
            question=_get(path, where, entry, "question", str, required=False),
        )
        _put(out, question_id, annotation, path, where, seen)
    return out


def read_vizwiz_annotations(path: PathLike) -> dict[str, VQAAnnotation]:
    """VizWiz's `val.json` (a list of `image`, `question`, `answers`, `answer_type`), keyed by the image file name."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise EvalFileError(path, f"expected VizWiz's list of questions, got {_type_name(data)}")
    out: dict[str, VQAAnnotation] = {}
    seen: dict[str, str] = {}
    for number, entry in enumerate(data):
        where = f"record {number + 1}"
        if not isinstance(entry, dict):
            raise EvalFileError(path, f"expected an object, got {_type_name(entry)}", where)
        image = Path(_get(path, where, entry, "image", str)).name
        annotation = VQAAnnotation(
            question_id=image,
            answers=_human_answers(path, where, entry),
            answer_type=_get(path, where, entry, "answer_type", str, required=False),
            image=image,
            question=_get(path, where, entry, "question", str, required=False),
        )
        _put(out, image, annotation, path, where, seen, what="image")
    return out


def read_vqa_jsonl(path: PathLike) -> dict[str, VQAAnnotation]:
    """Custom VQA data: JSONL (or a JSON list) of `question_id` with `answers` (list) or `answer` (string), or LLaVA
    conversation JSON (`id`, `image`, `conversations`: the first reply is the answer). A record's `question_type`,
    `type` or `category` is its question type, which the scores are broken down by."""
    out: dict[str, VQAAnnotation] = {}
    seen: dict[str, str] = {}
    for where, record in _records(path):
        conversation = "conversations" in record and "text" not in record
        if conversation:
            question_id = str(_get(path, where, record, "id", "id"))
            answers: tuple[str, ...] = (_conversation_answer(path, where, record),)
        else:
            question_id = str(_get(path, where, record, "question_id", "id"))
            if "answers" in record:
                answers = _human_answers(path, where, record)
            elif "answer" in record:
                answers = (_get(path, where, record, "answer", str),)
            else:
                raise EvalFileError(path, "missing 'answers' (a list) or 'answer' (a string)", where)
        annotation = VQAAnnotation(
            question_id=question_id,
            answers=answers,
            answer_type=_get(path, where, record, "answer_type", str, required=False),
            question_type=_question_type(path, where, record),
            image=_get(path, where, record, "image", str, required=False),
            question=None if conversation else _get(path, where, record, "text", str, required=False),
        )
        _put(out, question_id, annotation, path, where, seen)
    return out


# ----------------------------------------------------------------------------------------------------------------
# GQA


def read_gqa_questions(path: PathLike) -> dict[str, GQAQuestion]:
    """GQA's questions JSON (`{question_id: {"answer", "isBalanced", "types": {...}, ...}}`), e.g. testdev-balanced."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise EvalFileError(path, f"expected GQA's object of questions keyed by id, got {_type_name(data)}")
    out: dict[str, GQAQuestion] = {}
    for question_id, entry in data.items():
        where = f"question {question_id!r}"
        if not isinstance(entry, dict):
            raise EvalFileError(path, f"expected an object, got {_type_name(entry)}", where)
        types = entry.get("types") or {}
        if not isinstance(types, dict):
            raise EvalFileError(path, f"'types' must be an object, got {_type_name(types)}", where)
        is_balanced = entry.get("isBalanced", True)
        if not isinstance(is_balanced, bool):
            raise EvalFileError(path, f"'isBalanced' must be true or false, got {is_balanced!r:.40}", where)
        out[str(question_id)] = GQAQuestion(
            question_id=str(question_id),
            answer=_get(path, where, entry, "answer", str),
            is_balanced=is_balanced,
            structural=types.get("structural"),
            semantic=types.get("semantic"),
        )
    return out


# ----------------------------------------------------------------------------------------------------------------
# POPE


def pope_split_name(path: PathLike) -> str:
    """The split a POPE file holds: `coco_pope_adversarial.json` -> `"adversarial"` (else the file's stem)."""
    stem = Path(path).name.rsplit(".", 1)[0]
    return stem[len("coco_pope_") :] if stem.startswith("coco_pope_") and len(stem) > len("coco_pope_") else stem


def read_pope_annotations(path: PathLike) -> dict[str, list[POPELabel]]:
    """POPE's label files, `{split: labels in file order}`: one `coco_pope_*.json` file, or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.is_file() and p.name.startswith("coco_pope_") and p.suffix in (".json", ".jsonl")
        )
        if not files:
            raise EvalFileError(path, "no coco_pope_*.json file in this folder")
    elif path.exists():
        files = [path]
    else:
        raise EvalFileError(path, "no such file or folder")
    out: dict[str, list[POPELabel]] = {}
    for file in files:
        labels: list[POPELabel] = []
        seen: dict[str, str] = {}
        for where, record in _records(file):
            question_id = str(_get(file, where, record, "question_id", "id"))
            label = _get(file, where, record, "label", str)
            if label not in ("yes", "no"):
                raise EvalFileError(file, f"'label' must be 'yes' or 'no', got {label!r:.40}", where)
            if question_id in seen:
                raise EvalFileError(
                    file, f"duplicate question_id {question_id!r} (first at {seen[question_id]})", where
                )
            seen[question_id] = where
            labels.append(
                POPELabel(
                    question_id,
                    label,
                    _get(file, where, record, "image", str, required=False),
                    _get(file, where, record, "text", str, required=False),
                    f"{file}:{where}",
                )
            )
        if not labels:
            raise EvalFileError(file, "no labels in this file")
        out[pope_split_name(file)] = labels
    return out


# ----------------------------------------------------------------------------------------------------------------
# MME


_MME_SUFFIXES = ("Answer the question using a single word or phrase.", "Please answer yes or no.")


def mme_key(task: str, image: str, question: str) -> tuple[str, str, str]:
    """How an MME question is matched: its task, its image's name without extension, and its question without the
    response-format prompt and "Please answer yes or no." (whitespace collapsed, case folded)."""
    for suffix in _MME_SUFFIXES:
        question = question.replace(suffix, " ")
    return task, Path(image).stem, " ".join(question.split()).casefold()


def _mme_question_files(task_dir: Path) -> list[Path]:
    folder = task_dir / "questions_answers_YN"
    folder = folder if folder.is_dir() else task_dir
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt")


def read_mme_annotations(path: PathLike) -> dict[tuple[str, str, str], MMEItem]:
    """MME's release folder: a folder per task, each image's two questions in `<image>.txt` as `question<TAB>Yes/No`
    lines (in `questions_answers_YN/` for artwork, celebrity, landmark, posters and scene; beside the image for the
    others). `path` is the release folder (or one task folder). Keyed by [`mme_key`]."""
    path = Path(path)
    if not path.is_dir():
        raise EvalFileError(path, "expected MME's MME_Benchmark_release_version folder")
    task_dirs = [path] if path.name in MME_TASKS else [path / task for task in MME_TASKS if (path / task).is_dir()]
    if not task_dirs:
        raise EvalFileError(path, f"no MME task folder in it (expected some of {', '.join(MME_TASKS)})")
    out: dict[tuple[str, str, str], MMEItem] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for task_dir in task_dirs:
        files = _mme_question_files(task_dir)
        if not files:
            raise EvalFileError(task_dir, "no question file (<image>.txt) in this MME task folder")
        for file in files:
            try:
                lines = file.read_text(encoding="utf-8-sig").splitlines()
            except UnicodeDecodeError as error:
                raise EvalFileError(file, f"not UTF-8 ({error.reason} at byte {error.start})") from None
            for number, line in enumerate(lines, 1):
                where = f"line {number}"
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise EvalFileError(
                        file,
                        f"expected 'question<TAB>answer', got {len(parts)} tab-separated field(s): {line!r:.80}",
                        where,
                    )
                question, answer = parts
                if answer.strip().lower() not in ("yes", "no"):
                    raise EvalFileError(file, f"the answer must be Yes or No, got {answer!r:.40}", where)
                item = MMEItem(task_dir.name, file.stem, question, answer.strip().lower(), f"{file}:{where}")
                _put(out, mme_key(item.task, file.name, question), item, file, where, seen, what="question")
    return out


# ----------------------------------------------------------------------------------------------------------------
# MMBench


def _mmbench_cell(row: Mapping[str, str], column: str) -> str | None:
    value = row.get(column)
    return None if value is None or value.strip().lower() in _MMBENCH_NONE else value


def read_mmbench_tsv(path: PathLike, keep_images: bool = False) -> dict[str, MMBenchRow]:
    """MMBench's TSV, keyed by `str(index)`: the options are the `A`, `B`, ... cells up to the first empty one.

    `answer` is absent from the test split (scored by the OpenCompass server). The base64 `image` column is kept
    only with `keep_images`.
    """
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # the image column holds whole base64 images
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise EvalFileError(path, "no such file") from None
    out: dict[str, MMBenchRow] = {}
    seen: dict[str, str] = {}
    with handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = [column for column in ("index", "question", "A", "B") if column not in (reader.fieldnames or ())]
        if missing:
            raise EvalFileError(
                path,
                f"not an MMBench TSV: no {', '.join(repr(c) for c in missing)} column "
                f"(columns: {', '.join(reader.fieldnames or ())})",
                "line 1",
            )
        letters = [letter for letter in ANSWER_LETTERS if letter in reader.fieldnames]
        try:
            for row in reader:
                where = f"line {reader.line_num}"
                try:
                    index = int(row["index"].strip())
                except (AttributeError, ValueError):
                    raise EvalFileError(path, f"'index' must be an integer, got {row['index']!r:.40}", where) from None
                options = []
                for letter in letters:
                    option = _mmbench_cell(row, letter)
                    if option is None:
                        break
                    options.append(option)
                if len(options) < 2:
                    raise EvalFileError(path, f"index {index}: fewer than two options", where)
                answer = _mmbench_cell(row, "answer")
                if answer is not None and answer.strip() not in letters[: len(options)]:
                    raise EvalFileError(
                        path,
                        f"index {index}: answer {answer!r:.20} is not one of its options "
                        f"{', '.join(letters[: len(options)])}",
                        where,
                    )
                mmbench_row = MMBenchRow(
                    index=index,
                    question=row["question"] or "",
                    options=tuple(options),
                    answer=None if answer is None else answer.strip(),
                    hint=_mmbench_cell(row, "hint"),
                    category=_mmbench_cell(row, "category"),
                    l2_category=_mmbench_cell(row, "l2-category"),
                    split=_mmbench_cell(row, "split"),
                    image_base64=_mmbench_cell(row, "image") if keep_images else None,
                )
                _put(out, str(index), mmbench_row, path, where, seen, what="index")
        except csv.Error as error:
            raise EvalFileError(path, f"not a readable TSV ({error})", f"line {reader.line_num}") from None
        except UnicodeDecodeError as error:
            raise EvalFileError(path, f"not UTF-8 ({error.reason})") from None
    if not out:
        raise EvalFileError(path, "no rows")
    return out


def mmbench_question_text(row: MMBenchRow, round_id: int = 0) -> str:
    """The question LLaVA asks for an MMBench row (`model_vqa_mmbench`): the hint, the question, then `A. option`
    lines, the options rotated left by `round_id` (its `--all-rounds` CircularEval); no response-format prompt."""
    options = row.options[round_id:] + row.options[:round_id]
    text = row.question if row.hint is None else f"{row.hint}\n{row.question}"
    return text + "".join(f"\n{letter}. {option}" for letter, option in zip(ANSWER_LETTERS, options, strict=False))


def mmbench_questions(rows: Mapping[str, MMBenchRow], all_rounds: bool = False) -> list[Question]:
    """LLaVA's questions for MMBench rows (base64 image in `extra["image_base64"]` where the rows kept it); with
    `all_rounds` one question per rotation of the options, numbered by `round_id`."""
    questions = []
    for row in rows.values():
        for round_id in range(len(row.options) if all_rounds else 1):
            questions.append(
                Question(
                    question_id=row.index,
                    text=mmbench_question_text(row, round_id),
                    category=row.category,
                    round_id=round_id if all_rounds else None,
                    extra={"image_base64": row.image_base64},
                    source=f"MMBench index {row.index}",
                )
            )
    return questions


# ----------------------------------------------------------------------------------------------------------------
# ScienceQA


def read_scienceqa_problems(path: PathLike, split: str | None = "test") -> dict[str, SQAProblem]:
    """ScienceQA's `problems.json` (or the folder holding it), restricted to `split`: the ids `pid_splits.json` beside
    it lists for that split, else the problems whose own `split` field is it; `split=None` keeps them all."""
    path = Path(path)
    problems_path = path / "problems.json" if path.is_dir() else path
    data = _load_json(problems_path)
    if not isinstance(data, dict):
        raise EvalFileError(
            problems_path, f"expected ScienceQA's object of problems keyed by id, got {_type_name(data)}"
        )
    wanted: set[str] | None = None
    splits_path = problems_path.parent / "pid_splits.json"
    if split is not None and splits_path.exists():
        splits = _load_json(splits_path)
        if not isinstance(splits, dict) or not isinstance(splits.get(split), list):
            raise EvalFileError(splits_path, f"no {split!r} list of problem ids")
        wanted = {str(pid) for pid in splits[split]}
        unknown = sorted(wanted - set(map(str, data)))
        if unknown:
            raise EvalFileError(
                splits_path, f"{len(unknown)} {split} id(s) not in {problems_path.name}, e.g. {unknown[0]!r}"
            )
    out: dict[str, SQAProblem] = {}
    for pid, entry in data.items():
        where = f"problem {pid!r}"
        if not isinstance(entry, dict):
            raise EvalFileError(problems_path, f"expected an object, got {_type_name(entry)}", where)
        if wanted is not None and str(pid) not in wanted:
            continue
        if wanted is None and split is not None and entry.get("split", split) != split:
            continue
        choices = _get(problems_path, where, entry, "choices", list)
        if not choices or not all(isinstance(choice, str) for choice in choices):
            raise EvalFileError(problems_path, "'choices' must be a non-empty list of strings", where)
        answer = _get(problems_path, where, entry, "answer", int)
        if not 0 <= answer < len(choices):
            raise EvalFileError(
                problems_path, f"'answer' {answer} is not the index of one of its {len(choices)} choices", where
            )
        out[str(pid)] = SQAProblem(
            str(pid),
            tuple(choices),
            answer,
            bool(entry.get("image")),
            _get(problems_path, where, entry, "question", str, required=False),
        )
    if not out:
        raise EvalFileError(problems_path, f"no problem in split {split!r}")
    return out


def textvqa_question(prompt: str) -> str:
    """The question of a TextVQA prompt as LLaVA wrote it: the line that is neither its `Reference OCR token: ...`
    line nor the response-format prompt (or what stands between `Question:` and `Short answer:` in the older
    `OCR tokens: ...` layout)."""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match:
            return match.group(1).strip()
    lines = [line.strip() for line in prompt.split("\n")]
    for line in lines:
        if line and not line.startswith("Reference OCR token:") and not line.startswith("Answer the question using"):
            return line
    return prompt.strip()


def by_question_id(questions: Sequence[Question]) -> dict[str, Question]:
    """Questions keyed by `str(question_id)` (the first of several sharing an id, as MME's do)."""
    out: dict[str, Question] = {}
    for question in questions:
        out.setdefault(str(question.question_id), question)
    return out


__all__ = [
    "ANSWER_LETTERS",
    "MMBENCH_CIRCULAR_OFFSET",
    "MME_COGNITION_TASKS",
    "MME_PERCEPTION_TASKS",
    "MME_TASKS",
    "Answer",
    "EvalFileError",
    "GQAQuestion",
    "MMBenchRow",
    "MMEItem",
    "POPELabel",
    "Question",
    "SQAProblem",
    "VQAAnnotation",
    "by_question_id",
    "mmbench_question_text",
    "mmbench_questions",
    "mme_key",
    "pope_split_name",
    "read_answers",
    "read_gqa_questions",
    "read_mmbench_tsv",
    "read_mme_annotations",
    "read_pope_annotations",
    "read_questions",
    "read_scienceqa_problems",
    "read_vizwiz_annotations",
    "read_vqa_annotations",
    "read_vqa_jsonl",
    "textvqa_question",
]
