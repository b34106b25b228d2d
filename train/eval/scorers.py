"""The scorers LLaVA-1.5's published numbers come from, one function per benchmark.

Each `score_<benchmark>(predictions, annotations)` takes the model's answers keyed as the annotations are (a question
id for most; `(split, question_id)` for POPE, [`mme_key`] for MME, `(index, round_id)` for MMBench) and the parsed
annotations of [`minillava.train.eval.formats`], and returns a dict of metrics whose `overall` is the headline
figure the LLaVA-1.5 paper reports. A question without a prediction counts as answered wrong (`num_missing` says how
many); `skip_missing=True` scores only the answered questions instead, as LLaVA's own scripts do on partial files.

Answer normalisation ([`normalize_answer`]) follows the official VQA / EvalAI answer processor (the one in LLaVA's
`llava/eval/m4c_evaluator.py`, from MMF), and the answer parsers follow LLaVA's eval scripts line for line, quirks
included (each is named where it matters).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import lru_cache
from typing import Any

from .formats import (
    ANSWER_LETTERS,
    MMBENCH_CIRCULAR_OFFSET,
    MME_COGNITION_TASKS,
    MME_PERCEPTION_TASKS,
    GQAQuestion,
    MMBenchRow,
    MMEItem,
    POPELabel,
    SQAProblem,
    VQAAnnotation,
)


# ----------------------------------------------------------------------------------------------------------------
# VQA answer normalisation (the EvalAI answer processor)

# Number words become digits; "none" counts as 0.
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Removed where they touch a space, else replaced by a space ("." is handled apart, "'" and ":" are kept).
PUNCTUATION = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
# A "." not followed by a digit is dropped ("3.5" stays). The official code passes `re.UNICODE` where `re.sub` takes
# its `count`, so at most 32 periods go: kept for identical output.
_PERIOD = re.compile(r"\.(?!\d)")
_PERIOD_COUNT = int(re.UNICODE)
_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),+(?=\d)")

# The contractions the official processor restores: each form below is reached from its spelling without its
# apostrophe (one-apostrophe forms) or without any one of its apostrophes (forms with several: "couldnt've" and
# "couldn'tve" both give "couldn't've", "couldntve" does not).
_CONTRACTIONS_ONE = (
    "ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd how'll how's "
    "isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've o'clock oughtn't shan't should've "
    "shouldn't somebody'll somebody's someone'd someone'll someone's something'd something'll that's there'd "
    "there're there's they'd they'll they're they've 'twas wasn't we've weren't what'll what're what's what've "
    "when's where'd where's where've who'd who'll who's who've why'll why're why's won't would've wouldn't y'all "
    "you'd you'll you're you've"
).split()
_CONTRACTIONS_SEVERAL = (
    "couldn't've hadn't've he'd've it'd've mightn't've she'd've shouldn't've somebody'd've someone'd've "
    "something'd've there'd've they'd've we'd've who'd've wouldn't've y'all'll y'all'd've you'd've 'ow's'at"
).split()


def _contractions() -> dict[str, str]:
    table = {form.replace("'", ""): form for form in _CONTRACTIONS_ONE}
    for form in _CONTRACTIONS_SEVERAL:
        apostrophes = [i for i, char in enumerate(form) if char == "'"]
        for i in apostrophes:
            table[form[:i] + form[i + 1 :]] = form
    # The official table maps this one the wrong way round; kept for identical output.
    table["somebody'd"] = "somebodyd"
    return table


CONTRACTIONS = _contractions()


def _process_punctuation(text: str) -> str:
    out = text
    digit_commas = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        # the test looks at the text as it came in, not as the earlier marks left it
        if f"{mark} " in text or f" {mark}" in text or digit_commas:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def _process_digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


@lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """The official VQA answer normalisation (EvalAI's answer processor, as LLaVA's `m4c_evaluator.py` runs it):
    lower case, commas and "?" dropped, "'s" split off, punctuation removed or turned into spaces, periods not
    before a digit dropped, number words to digits, articles dropped, apostrophe-less contractions restored.

    >>> normalize_answer("Yes.")
    'yes'
    >>> normalize_answer("Two dogs")
    '2 dogs'
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


def _leave_one_out(matches: list[bool]) -> float:
    """min(1, matching human answers / 3), averaged over the subsets that leave one human answer out."""
    if not matches:
        raise ValueError("no human answers to score against")
    total = sum(matches)
    return sum(min(1.0, (total - left_out) / 3) for left_out in matches) / len(matches)


def vqa_accuracy(prediction: str, human_answers: Iterable[str]) -> float:
    """VQA accuracy of one prediction: min(1, #humans who gave it / 3), averaged over the subsets of the human answers
    that leave one out (the 10 choose 9 subsets of VQA's 10 answers); both sides normalised."""
    predicted = normalize_answer(prediction)
    return _leave_one_out([normalize_answer(answer) == predicted for answer in human_answers])


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """Whether the normalised prediction equals one of the normalised answers."""
    return normalize_answer(prediction) in {normalize_answer(answer) for answer in answers}


def vqa_server_accuracy(prediction: str, human_answers: Iterable[str]) -> float:
    """VQA accuracy as the VQAv2 evaluation server scores an answer from LLaVA's submission file: the answer
    [`normalize_answer`]ed (as `convert_vqav2_for_submission.py` writes it), then processed again by the official
    `vqaEval.py` (punctuation, number words, articles, contractions); the human answers only stripped of punctuation,
    and only where they disagree; min(1, matches / 3) averaged over the leave-one-out subsets."""
    predicted = _process_digits_and_articles(_process_punctuation(normalize_answer(prediction)))
    answers = list(human_answers)
    if len(set(answers)) > 1:
        answers = [_process_punctuation(answer) for answer in answers]
    return _leave_one_out([answer == predicted for answer in answers])


# ----------------------------------------------------------------------------------------------------------------
# answer parsers (LLaVA's eval scripts)


def gqa_normalize(text: str) -> str:
    """GQA's prediction as LLaVA's `scripts/convert_gqa_for_eval.py` writes it: trailing periods dropped, lower case
    (compared as is with the gold answer by GQA's `eval.py`)."""
    return text.strip().rstrip(".").lower()


def parse_pope_answer(text: str) -> str:
    """Yes or no as LLaVA's `eval_pope.py` reads it: the first sentence, commas dropped, "no" if one of its
    space-separated words is "No", "no" or "not", else "yes" (so "NO" reads as yes, as there)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def parse_mme_answer(text: str) -> str:
    """Yes, no or other as MME's `calculation.py` reads it: the lower-cased answer itself if it is yes or no, else
    "yes" or "no" found in its first 4 characters (yes first), else "other"."""
    text = text.strip().lower()
    if text in ("yes", "no"):
        return text
    prefix = text[:4]
    return "yes" if "yes" in prefix else "no" if "no" in prefix else "other"


def parse_scienceqa_answer(text: str, num_choices: int) -> int:
    """The choice index LLaVA's `eval_science_qa.py` reads from an answer, -1 if none: the answer is a letter (after
    stripping), or starts with "X. ", or holds "The answer is X" (newlines read as ". "). Letters go up to E and must
    be one of the problem's choices; "B." alone reads as no answer, as there."""
    text = text.replace("\n", ". ")
    letters = tuple(ANSWER_LETTERS[:5])
    if text.strip() in letters:
        letter = text.strip()
    elif len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
        letter = text[0]
    else:
        match = re.search(r"The answer is ([A-E])\.", text) or re.search(r"The answer is ([A-E])", text)
        letter = match.group(1) if match else None
    if letter is None or letters.index(letter) >= num_choices:
        return -1
    return letters.index(letter)


def parse_mmbench_answer(text: str, options: tuple[str, ...]) -> str | None:
    """The option letter LLaVA's `eval_mmbench.py` reads before asking a GPT judge (`auto_parse_answer`): the answer
    is a letter (trailing periods dropped), or holds "The answer is X.", or is inside exactly one option's text;
    `None` otherwise (counted wrong here: no judge is called)."""
    letters = tuple(ANSWER_LETTERS[: len(options)])
    answer = text.strip()
    bare = answer.strip(".").strip().upper()
    if bare in letters:
        return bare
    lowered = answer.lower()
    for letter in letters:
        if f"the answer is {letter}.".lower() in lowered:
            return letter
    inside = [letter for letter, option in zip(letters, options, strict=True) if lowered in option.lower()]
    return inside[0] if len(inside) == 1 else None


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _key(key: Hashable) -> Hashable:
    return tuple(str(part) for part in key) if isinstance(key, tuple) else str(key)


def _canonical(predictions: Mapping) -> dict:
    return {_key(key): text for key, text in predictions.items()}


class _Lookup:
    """The predictions, looked up question by question: counts the questions without one (`missing`) and says whether
    a question is scored (an unanswered one counts as wrong, or is left out with `skip_missing`)."""

    def __init__(self, predictions: Mapping, skip_missing: bool):
        self.predictions, self.skip_missing, self.missing = predictions, skip_missing, 0

    def __call__(self, key: Hashable) -> tuple[bool, str | None]:
        text = self.predictions.get(key)
        if text is None:
            self.missing += 1
            return not self.skip_missing, None
        return True, text


def _percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


def _breakdown(groups: Mapping[str, list[float]]) -> dict[str, float]:
    return {name: _percent(values) for name, values in sorted(groups.items())}


# ----------------------------------------------------------------------------------------------------------------
# VQAv2, TextVQA, VizWiz, custom VQA


def _score_vqa(
    predictions: Mapping,
    annotations: Mapping[str, VQAAnnotation],
    skip_missing: bool,
    accuracy: Callable[[str, Iterable[str]], float] = vqa_accuracy,
) -> dict[str, Any]:
    predictions = _canonical(predictions)
    scores: list[float] = []
    per_type: dict[str, list[float]] = defaultdict(list)
    lookup = _Lookup(predictions, skip_missing)
    for key, annotation in annotations.items():
        scored, text = lookup(key)
        if not scored:
            continue
        score = 0.0 if text is None else accuracy(text, annotation.answers)
        scores.append(score)
        if annotation.answer_type is not None:
            per_type[annotation.answer_type].append(score)
    metrics: dict[str, Any] = {"overall": _percent(scores), "accuracy": _percent(scores)}
    if per_type:
        metrics["per_answer_type"] = _breakdown(per_type)
    metrics.update(num_questions=len(scores), num_missing=lookup.missing)
    return metrics


def score_vqav2(predictions: Mapping, annotations: Mapping[str, VQAAnnotation], skip_missing: bool = False) -> dict:
    """VQAv2: VQA accuracy (%) over the annotated questions, and per answer type (yes/no, number, other), as the
    evaluation server computes it on LLaVA's submission file ([`vqa_server_accuracy`]: the official `vqaEval.py`).
    It differs from TextVQA's symmetric normalisation only on human answers that hold a number word, an article or
    an apostrophe-less contraction (VQAv2's own annotations are already normalised)."""
    return _score_vqa(predictions, annotations, skip_missing, accuracy=vqa_server_accuracy)


def score_textvqa(predictions: Mapping, annotations: Mapping[str, VQAAnnotation], skip_missing: bool = False) -> dict:
    """TextVQA: VQA accuracy (%) as LLaVA's `eval_textvqa.py` computes it (`TextVQAAccuracyEvaluator`)."""
    return _score_vqa(predictions, annotations, skip_missing)


def score_vizwiz(predictions: Mapping, annotations: Mapping[str, VQAAnnotation], skip_missing: bool = False) -> dict:
    """VizWiz: VQA accuracy (%) and per answer type (incl. "unanswerable"); keys are image file names."""
    return _score_vqa(predictions, annotations, skip_missing)


def score_vqa(predictions: Mapping, annotations: Mapping[str, VQAAnnotation], skip_missing: bool = False) -> dict:
    """Custom VQA data: exact match (%) of the normalised prediction with any normalised answer, and VQA accuracy
    (%) where every question has 10 answers; `overall` is VQA accuracy then, else exact match. Questions with a
    `question_type` also get `per_question_type` (the overall metric per type) and `num_questions_per_type`."""
    predictions = _canonical(predictions)
    ten_answers = bool(annotations) and all(len(annotation.answers) == 10 for annotation in annotations.values())
    matched: list[float] = []
    per_type: dict[str, list[float]] = defaultdict(list)
    lookup = _Lookup(predictions, skip_missing)
    for key, annotation in annotations.items():
        scored, text = lookup(key)
        if not scored:
            continue
        matched.append(0.0 if text is None else float(exact_match(text, annotation.answers)))
        if annotation.question_type is not None:
            overall = matched[-1] if not ten_answers or text is None else vqa_accuracy(text, annotation.answers)
            per_type[annotation.question_type].append(overall)
    metrics: dict[str, Any] = {"exact_match": _percent(matched)}
    if ten_answers:
        metrics["vqa_accuracy"] = _score_vqa(predictions, annotations, skip_missing)["accuracy"]
        metrics["overall"], metrics["overall_metric"] = metrics["vqa_accuracy"], "vqa_accuracy"
    else:
        metrics["overall"], metrics["overall_metric"] = metrics["exact_match"], "exact_match"
    if per_type:
        metrics["per_question_type"] = _breakdown(per_type)
        metrics["num_questions_per_type"] = {name: len(values) for name, values in sorted(per_type.items())}
    metrics.update(num_questions=len(matched), num_missing=lookup.missing)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# GQA


def score_gqa(predictions: Mapping, questions: Mapping[str, GQAQuestion], skip_missing: bool = False) -> dict:
    """GQA: accuracy (%) of [`gqa_normalize`]d predictions against the gold answers over the balanced questions (as
    GQA's `eval.py`), split into binary and open questions (structural type "query" is open) and per type."""
    predictions = _canonical(predictions)
    scores: list[float] = []
    answer_kind: dict[str, list[float]] = defaultdict(list)
    structural: dict[str, list[float]] = defaultdict(list)
    semantic: dict[str, list[float]] = defaultdict(list)
    lookup = _Lookup(predictions, skip_missing)
    for key, question in questions.items():
        if not question.is_balanced:
            continue
        scored, text = lookup(key)
        if not scored:
            continue
        score = float(text is not None and gqa_normalize(text) == question.answer)
        scores.append(score)
        if question.structural is not None:
            answer_kind["open" if question.structural == "query" else "binary"].append(score)
            structural[question.structural].append(score)
        if question.semantic is not None:
            semantic[question.semantic].append(score)
    metrics: dict[str, Any] = {"overall": _percent(scores), "accuracy": _percent(scores)}
    for kind in ("binary", "open"):
        if answer_kind[kind]:
            metrics[kind] = _percent(answer_kind[kind])
    if structural:
        metrics["per_structural_type"] = _breakdown(structural)
    if semantic:
        metrics["per_semantic_type"] = _breakdown(semantic)
    metrics.update(num_questions=len(scores), num_missing=lookup.missing)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# POPE


def pope_metrics(predicted: list[str], labels: list[str]) -> dict[str, float | int]:
    """Accuracy, precision, recall, F1 (yes is the positive class) and the ratio of yes answers, with the confusion
    counts, as LLaVA's `eval_pope.py` reports them (fractions, not %; 0 where a ratio has nothing to divide)."""
    pairs = list(zip(predicted, labels, strict=True))
    tp = sum(p == "yes" and y == "yes" for p, y in pairs)
    fp = sum(p == "yes" and y == "no" for p, y in pairs)
    tn = sum(p == "no" and y == "no" for p, y in pairs)
    fn = sum(p == "no" and y == "yes" for p, y in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs) if pairs else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": predicted.count("yes") / len(predicted) if predicted else 0.0,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def score_pope(predictions: Mapping, labels: Mapping[str, list[POPELabel]], skip_missing: bool = False) -> dict:
    """POPE: per split (random, popular, adversarial) accuracy, precision, recall, F1 and yes-ratio of the answers
    read by [`parse_pope_answer`]; `overall` is the F1 (%) averaged over the splits, as the LLaVA-1.5 paper reports.
    Predictions are keyed `(split, question_id)`; a missing answer counts as the wrong one (the label's opposite)."""
    predictions = _canonical(predictions)
    per_split: dict[str, dict] = {}
    lookup = _Lookup(predictions, skip_missing)
    for split, split_labels in labels.items():
        predicted, truth = [], []
        for label in split_labels:
            scored, text = lookup((split, label.question_id))
            if not scored:
                continue
            predicted.append(parse_pope_answer(text) if text is not None else "no" if label.label == "yes" else "yes")
            truth.append(label.label)
        per_split[split] = {**pope_metrics(predicted, truth), "num_questions": len(truth)}
    f1s = [metrics["f1"] for metrics in per_split.values()]
    return {
        "overall": _percent(f1s),
        "f1": _percent(f1s),
        "accuracy": _percent([metrics["accuracy"] for metrics in per_split.values()]),
        "per_split": per_split,
        "num_questions": sum(metrics["num_questions"] for metrics in per_split.values()),
        "num_missing": lookup.missing,
    }


# ----------------------------------------------------------------------------------------------------------------
# MME


def score_mme(predictions: Mapping, items: Mapping[tuple[str, str, str], MMEItem], skip_missing: bool = False) -> dict:
    """MME: per sub-task acc (questions right) and acc+ (images with both questions right), score = 100 (acc + acc+);
    the perception total over its 10 tasks, the cognition total over its 4 (as MME's `calculation.py`). `overall` is
    the perception total. Predictions are keyed by [`mme_key`] and read by [`parse_mme_answer`]."""
    predictions = dict(predictions)
    images: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    other: dict[str, int] = defaultdict(int)
    lookup = _Lookup(predictions, skip_missing)
    for key, item in items.items():
        scored, text = lookup(key)
        if not scored:
            continue
        parsed = "other" if text is None else parse_mme_answer(text)
        other[item.task] += parsed == "other"
        images[item.task][item.image].append(parsed == item.answer)
    per_task = {}
    for task in sorted(images):
        answers = [right for image in images[task].values() for right in image]
        acc = sum(answers) / len(answers)
        acc_plus = sum(all(image) for image in images[task].values()) / len(images[task])
        per_task[task] = {
            "acc": 100 * acc,
            "acc_plus": 100 * acc_plus,
            "score": 100 * (acc + acc_plus),
            "num_questions": len(answers),
            "num_images": len(images[task]),
            "num_other": other[task],
        }
    perception = sum(per_task[task]["score"] for task in MME_PERCEPTION_TASKS if task in per_task)
    cognition = sum(per_task[task]["score"] for task in MME_COGNITION_TASKS if task in per_task)
    return {
        "overall": perception,
        "perception": perception,
        "cognition": cognition,
        "total": perception + cognition,
        "per_task": per_task,
        "missing_tasks": [task for task in MME_PERCEPTION_TASKS + MME_COGNITION_TASKS if task not in per_task],
        "num_questions": sum(task["num_questions"] for task in per_task.values()),
        "num_missing": lookup.missing,
    }


# ----------------------------------------------------------------------------------------------------------------
# MMBench


def _mmbench_trial(row: MMBenchRow, round_id: int, text: str | None) -> bool:
    """Whether the answer to `row` with its options rotated left by `round_id` names the row's right option."""
    if text is None:
        return False
    n = len(row.options)
    shown = row.options[round_id % n :] + row.options[: round_id % n]
    letter = parse_mmbench_answer(text, shown)
    if letter is None:
        return False
    original = ANSWER_LETTERS[(ANSWER_LETTERS.index(letter) + round_id) % n]
    return original == row.answer


def score_mmbench(predictions: Mapping, rows: Mapping[str, MMBenchRow], skip_missing: bool = False) -> dict:
    """MMBench CircularEval: a question counts as right only if every circular pass of it is. The passes are its
    TSV rows (row `i` and its variants `i + k * 10**6` with the options shifted, as in MMBench's own TSVs and
    VLMEvalKit's `mcq_circular_eval`) and, for each row, every `round_id` answered (LLaVA's `--all-rounds`
    rotations). Predictions are keyed `(index, round_id)` (a bare index is round 0), read by
    [`parse_mmbench_answer`]. `overall` is the CircularEval accuracy (%); `vanilla_accuracy` is round 0 of the
    main rows alone."""
    passes: dict[tuple[str, int], str] = {}
    for key, text in predictions.items():
        index, round_id = key if isinstance(key, tuple) else (key, 0)
        passes[(str(index), int(round_id or 0))] = text
    unanswerable = [row.index for row in rows.values() if row.answer is None]
    if unanswerable:
        raise ValueError(
            f"{len(unanswerable)} MMBench row(s) have no answer (e.g. index {unanswerable[0]}): the test "
            "split is scored by the OpenCompass server, score the dev split here"
        )
    rounds: dict[str, list[int]] = defaultdict(list)
    for index, round_id in passes:
        rounds[index].append(round_id)
    groups: dict[int, list[MMBenchRow]] = defaultdict(list)
    for row in rows.values():
        groups[row.index % MMBENCH_CIRCULAR_OFFSET].append(row)
    hits: list[float] = []
    vanilla: list[float] = []
    per_category: dict[str, list[float]] = defaultdict(list)
    per_l2: dict[str, list[float]] = defaultdict(list)
    per_split: dict[str, list[float]] = defaultdict(list)
    missing = single_pass = 0
    for group_index in sorted(groups):
        group = sorted(groups[group_index], key=lambda row: row.index)
        main = group[0]
        if main.index != group_index:
            raise ValueError(f"MMBench circular variant {main.index} has no main row {group_index}")
        trials = []
        for row in group:
            answered = sorted(rounds.get(str(row.index), ()))
            if not answered:
                missing += 1
            trials += [_mmbench_trial(row, r, passes[(str(row.index), r)]) for r in answered] or [None]
        if skip_missing and None in trials:
            continue
        single_pass += len(trials) == 1
        hit = float(all(trials))
        hits.append(hit)
        vanilla.append(float(_mmbench_trial(main, 0, passes.get((str(main.index), 0)))))
        for table, name in ((per_category, main.category), (per_l2, main.l2_category), (per_split, main.split)):
            if name is not None:
                table[name].append(hit)
    metrics: dict[str, Any] = {
        "overall": _percent(hits),
        "circular_accuracy": _percent(hits),
        "vanilla_accuracy": _percent(vanilla),
    }
    for name, table in (("per_split", per_split), ("per_l2_category", per_l2), ("per_category", per_category)):
        if table:
            metrics[name] = _breakdown(table)
    metrics.update(num_questions=len(hits), num_single_pass_questions=single_pass, num_missing=missing)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# ScienceQA


def score_scienceqa(predictions: Mapping, problems: Mapping[str, SQAProblem], skip_missing: bool = False) -> dict:
    """ScienceQA: accuracy (%) of the letters read by [`parse_scienceqa_answer`], over all problems of the split and
    over those with an image (`img_accuracy`, the paper's SQA-IMG). `overall` is the IMG accuracy (all problems'
    accuracy if none has an image; `overall_subset` says which)."""
    predictions = _canonical(predictions)
    scores: list[float] = []
    image_scores: list[float] = []
    lookup = _Lookup(predictions, skip_missing)
    for key, problem in problems.items():
        scored, text = lookup(key)
        if not scored:
            continue
        score = float(text is not None and parse_scienceqa_answer(text, len(problem.choices)) == problem.answer)
        scores.append(score)
        if problem.has_image:
            image_scores.append(score)
    metrics: dict[str, Any] = {
        "overall": _percent(image_scores) if image_scores else _percent(scores),
        "overall_subset": "IMG" if image_scores else "all",
        "accuracy": _percent(scores),
        "img_accuracy": _percent(image_scores) if image_scores else None,
        "num_questions": len(scores),
        "num_img_questions": len(image_scores),
        "num_missing": lookup.missing,
    }
    return metrics


__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "exact_match",
    "gqa_normalize",
    "normalize_answer",
    "parse_mmbench_answer",
    "parse_mme_answer",
    "parse_pope_answer",
    "parse_scienceqa_answer",
    "pope_metrics",
    "score_gqa",
    "score_mmbench",
    "score_mme",
    "score_pope",
    "score_scienceqa",
    "score_textvqa",
    "score_vizwiz",
    "score_vqa",
    "score_vqav2",
    "vqa_accuracy",
    "vqa_server_accuracy",
]
