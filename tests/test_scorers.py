"""The evaluation core (`minillava.train.eval`): each scorer on cases worked by hand from its benchmark's definition
and on cases traced step by step through the benchmark's published scoring code (named in each test), the readers on
small files of each official format, their error messages, the response-format prompts and the registry."""

import doctest
import json
import math
import subprocess
import sys

import pytest

from minillava.train.eval import (
    BENCHMARKS,
    PAPER_EVAL_PROMPTS,
    EvalError,
    EvalFileError,
    add_response_prompt,
    benchmarks,
    evaluate,
    formats,
    normalize_answer,
    read_answers,
    read_questions,
    scorers,
    vqa_accuracy,
    write_results,
    write_vizwiz_submission,
    write_vqav2_submission,
)
from minillava.train.eval.formats import MMBenchRow, MMEItem, mme_key


SHORT = "Answer the question using a single word or phrase."


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def answers_file(path, answers):
    """LLaVA's answer JSONL: `{question_id: text}` or `[(question_id, text, prompt), ...]`."""
    items = answers.items() if isinstance(answers, dict) else answers
    records = []
    for number, item in enumerate(items):
        question_id, text, *rest = item
        record = {
            "question_id": question_id,
            "prompt": rest[0] if rest else "q",
            "text": text,
            "answer_id": f"id{number}",
            "model_id": "llava-v1.5-7b",
            "metadata": {},
        }
        records.append(record)
    return write_jsonl(path, records)


# ----------------------------------------------------------------------------------------------------------------
# VQA normalisation


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", "yes"),  # case, final period
        ("YES", "yes"),
        ("yes\n", "yes"),
        ("The cat", "cat"),  # articles
        ("a dog", "dog"),
        ("an apple", "apple"),
        ("Two", "2"),  # number words
        ("ten apples", "10 apples"),
        ("none", "0"),
        ("dont", "don't"),  # contractions restored
        ("isnt it", "isn't it"),
        ("couldnt've", "couldn't've"),
        ("couldn'tve", "couldn't've"),
        ("couldntve", "couldntve"),  # not in the table: both apostrophes missing
        ("red/blue", "red blue"),  # a mark inside a word becomes a space...
        ("red / blue", "red blue"),  # ...and one touching a space goes
        ("hello!", "hello"),
        ("(left)", "left"),
        ("well-known", "well known"),
        ("what?", "what"),  # "?" and "," are dropped first
        ("1,000", "1000"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("e.g.", "eg"),
        ("man's hat", "man 's hat"),  # "'s" split off
        ("it's 5:30", "it 's 5:30"),  # ":" and "'" are not in the punctuation list
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_normalize_answer_keeps_the_official_quirks():
    # the official contraction table maps "somebody'd" the wrong way round
    assert normalize_answer("somebody'd") == "somebodyd"
    # the official `periodStrip.sub("", text, re.UNICODE)` passes re.UNICODE (32) as `count`: 40 periods leave 8
    assert normalize_answer("." * 40) == "." * 8
    # every apostrophe-less spelling the official table restores
    assert scorers.CONTRACTIONS["yall'd've"] == scorers.CONTRACTIONS["y'all'dve"] == "y'all'd've"
    assert scorers.CONTRACTIONS["'ows'at"] == "'ow's'at" and scorers.CONTRACTIONS["twas"] == "'twas"
    assert "shed" not in scorers.CONTRACTIONS and "its" not in scorers.CONTRACTIONS  # real words, left alone


def test_normalize_answer_traced_through_m4c_evaluator():
    # llava/eval/m4c_evaluator.py, EvalAIAnswerProcessor.__call__ on its own __main__ example:
    #   word_tokenize:          "the poster shows a 10% discount."  (lower; no ",", "?" or "'s")
    #   process_punctuation:    no mark of PUNCTUATIONS in it ("%" is not one); PERIOD_STRIP drops the final "."
    #                           -> "the poster shows a 10% discount"
    #   process_digit_article:  "the" and "a" dropped -> "poster shows 10% discount"
    assert normalize_answer("The poster shows a 10% discount.") == "poster shows 10% discount"
    # "Hi, (there)!": word_tokenize drops "," -> "hi (there)!"; process_punctuation sees " (" in the input, so "("
    # is removed, ")" and "!" touch no space and become spaces -> "hi there  "; split/join -> "hi there"
    assert normalize_answer("Hi, (there)!") == "hi there"


# ----------------------------------------------------------------------------------------------------------------
# VQA accuracy


@pytest.mark.parametrize(
    ("matches", "expected"),
    [
        # With m of the 10 human answers equal to the prediction, VQA accuracy averages min(1, matches / 3) over
        # the 10 subsets of 9 answers: the m subsets that leave a matching answer out hold m - 1 matches, the
        # 10 - m others hold m.
        (0, 0.0),  # nobody said it
        (1, 0.3),  # (1 * min(1, 0/3) + 9 * min(1, 1/3)) / 10 = (0 + 3) / 10
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10
        (3, 0.9),  # (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10
        (4, 1.0),  # every subset of 9 still holds >= 3 matches
        (10, 1.0),
    ],
)
def test_vqa_accuracy_by_hand(matches, expected):
    humans = ["red"] * matches + ["blue"] * (10 - matches)
    assert vqa_accuracy("red", humans) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    # "Two" -> "2" on the human side, "2." -> "2" on the model side: 3 matches -> 0.9
    assert vqa_accuracy("2.", ["Two"] * 3 + ["three"] * 7) == pytest.approx(0.9)
    assert vqa_accuracy("The Dog", ["dog"] * 10) == 1.0


@pytest.mark.parametrize("matches", [0, 1, 2, 3, 4, 10])
def test_vqa_server_accuracy_by_hand(matches):
    # the same leave-one-out average as above on answers the server's processing leaves alone
    humans = ["red"] * matches + ["blue"] * (10 - matches)
    assert scorers.vqa_server_accuracy("Red.", humans) == pytest.approx(min(1.0, 0.3 * matches))


def test_vqa_server_accuracy_leaves_human_answers_as_vqaEval_does():
    # vqaEval.py normalises the submitted answer fully but the human answers only through processPunctuation, and
    # only where they disagree: "two" stays "two" while the answer becomes "2"
    assert scorers.vqa_server_accuracy("two", ["two"] * 10) == 0.0
    assert vqa_accuracy("two", ["two"] * 10) == 1.0
    # "red!" -> "red " (the mark touches no space, so it becomes one) and never matches "red"
    assert scorers.vqa_server_accuracy("red", ["red!"] * 9 + ["blue"]) == 0.0
    # all ten alike: not even punctuation is touched, and case is kept
    assert scorers.vqa_server_accuracy("yes", ["Yes"] * 10) == 0.0
    assert scorers.vqa_server_accuracy("yes", ["Yes"] * 9 + ["yes"]) == pytest.approx(0.3)


def textvqa_fixture(tmp_path):
    data = {
        "dataset_name": "textvqa",
        "dataset_version": "0.5.1",
        "data": [
            {
                "question_id": 34602,
                "image_id": "003a8ae2ef43b901",
                "question": "what is the brand of this camera?",
                "answers": ["dakota"] * 6 + ["dakota digital"] * 3 + ["nous les gosses"],
            },
            {
                "question_id": 34603,
                "image_id": "003a8ae2ef43b901",
                "question": "what does the small text say?",
                "answers": ["dakota digital"] * 3 + ["dakota"] * 7,
            },
            {
                "question_id": 34604,
                "image_id": "00685bc495504d61",
                "question": "what is written on the sign?",
                "answers": ["nous les gosses"] + ["stop"] * 9,
            },
        ],
    }
    return write_json(tmp_path / "TextVQA_0.5.1_val.json", data)


def test_textvqa_traced_through_m4c_evaluator(tmp_path):
    # llava/eval/eval_textvqa.py keys the annotations by (image_id, question.lower()), LLaVA's TextVQA question file
    # using the image id as question_id and prompt_processor() taking the question line of the prompt; then
    # m4c_evaluator.TextVQAAccuracyEvaluator.eval_pred_list:
    #   "Dakota"           -> "dakota": 6 humans -> every 9-subset holds >= 5 -> 1.0
    #   "dakota digital."  -> "dakota digital": 3 humans -> 0.9
    #   "Nous les gosses"  -> "nous les gosses": 1 human -> 0.3
    #   accuracy = (1.0 + 0.9 + 0.3) / 3 = 0.7333 -> "Accuracy: 73.33%"
    ocr = "\nReference OCR token: DAKOTA, DIGITAL\n" + SHORT
    answers = answers_file(
        tmp_path / "answers.jsonl",
        [
            ("003a8ae2ef43b901", "Dakota", "what is the brand of this camera?" + ocr),
            ("003a8ae2ef43b901", "dakota digital.", "what does the small text say?" + ocr),
            ("00685bc495504d61", "Nous les gosses", "what is written on the sign?\n" + SHORT),
        ],
    )
    results = evaluate("textvqa", answers, textvqa_fixture(tmp_path))
    assert results["overall"] == pytest.approx(100 * 2.2 / 3)
    assert results["metrics"]["num_questions"] == 3 and results["num_unmatched_answers"] == 0
    # TextVQA's own question ids match too
    results = evaluate(
        "textvqa", answers_file(tmp_path / "by_id.jsonl", {34602: "dakota", 34604: "stop"}), textvqa_fixture(tmp_path)
    )
    assert results["overall"] == pytest.approx(100 * 2 / 3)  # 34603 has no answer: counted wrong
    assert results["metrics"]["num_missing"] == 1


def vqav2_fixture(tmp_path):
    def humans(*answers):
        return [{"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i, answer in enumerate(answers)]

    annotations = {
        "info": {},
        "license": {},
        "data_subtype": "val2014",
        "annotations": [
            {
                "question_id": 1,
                "image_id": 42,
                "question_type": "is the",
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": humans(*["yes"] * 10),
            },
            {
                "question_id": 2,
                "image_id": 42,
                "question_type": "how many",
                "answer_type": "number",
                "multiple_choice_answer": "2",
                "answers": humans(*["2"] * 2, *["3"] * 8),
            },
            {
                "question_id": 3,
                "image_id": 43,
                "question_type": "what color",
                "answer_type": "other",
                "multiple_choice_answer": "red",
                "answers": humans(*["red"] * 5, *["dark red"] * 5),
            },
        ],
    }
    return write_json(tmp_path / "v2_mscoco_val2014_annotations.json", annotations)


def test_vqav2_accuracy_and_answer_types(tmp_path):
    answers = answers_file(tmp_path / "answers.jsonl", {1: "Yes", 2: "Two", 3: "The red one"})
    results = evaluate("vqav2", answers, vqav2_fixture(tmp_path))
    # 1: 10 matches -> 1.0; 2: "two" -> "2", 2 matches -> 0.6; 3: "red one" matches nobody -> 0
    assert results["overall"] == pytest.approx(100 * 1.6 / 3)
    assert results["metrics"]["per_answer_type"] == pytest.approx({"number": 60.0, "other": 0.0, "yes/no": 100.0})
    assert results["overall_metric"] == "VQA accuracy (%)"


def test_vqav2_submission_file(tmp_path):
    # as scripts/convert_vqav2_for_submission.py: every question of the split in order, the EvalAI-processed answer,
    # "" where the model gave none
    questions = write_jsonl(
        tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl",
        [
            {
                "question_id": 262144000,
                "image": "COCO_test2015_000000262144.jpg",
                "text": "Is it sunny?\n" + SHORT,
                "category": "default",
            },
            {"question_id": 262144001, "image": "COCO_test2015_000000262144.jpg", "text": "How many?\n" + SHORT},
            {"question_id": 262144002, "image": "COCO_test2015_000000262144.jpg", "text": "What is it?\n" + SHORT},
        ],
    )
    answers = answers_file(tmp_path / "answers.jsonl", {262144000: "Yes.", 262144002: "A dog"})
    counts = write_vqav2_submission(answers, questions, tmp_path / "upload" / "submission.json")
    assert json.loads((tmp_path / "upload" / "submission.json").read_text()) == [
        {"question_id": 262144000, "answer": "yes"},
        {"question_id": 262144001, "answer": ""},
        {"question_id": 262144002, "answer": "dog"},
    ]
    assert counts == {"num_questions": 3, "num_answered": 2, "num_missing": 1}


def vizwiz_fixture(tmp_path):
    def humans(*answers):
        return [{"answer": answer, "answer_confidence": "yes"} for answer in answers]

    return write_json(
        tmp_path / "val.json",
        [
            {
                "image": "VizWiz_val_00000000.jpg",
                "question": "What is this?",
                "answerable": 1,
                "answer_type": "other",
                "answers": humans(*["soup"] * 4, *["can"] * 6),
            },
            {
                "image": "VizWiz_val_00000001.jpg",
                "question": "What colour?",
                "answerable": 0,
                "answer_type": "unanswerable",
                "answers": humans(*["unanswerable"] * 10),
            },
        ],
    )


def test_vizwiz_matches_by_image_and_writes_its_submission(tmp_path):
    prompt = "When the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    questions = write_jsonl(
        tmp_path / "llava_val.jsonl",
        [
            {"question_id": 0, "image": "VizWiz_val_00000000.jpg", "text": "What is this?\n" + prompt},
            {"question_id": 1, "image": "VizWiz_val_00000001.jpg", "text": "What colour?\n" + prompt},
        ],
    )
    answers = answers_file(tmp_path / "answers.jsonl", {0: "Soup", 1: "Unanswerable"})
    results = evaluate("vizwiz", answers, vizwiz_fixture(tmp_path), questions=questions)
    # soup: 4 matches -> 1.0; unanswerable: 10 -> 1.0
    assert results["overall"] == 100.0
    assert results["metrics"]["per_answer_type"] == {"other": 100.0, "unanswerable": 100.0}
    with pytest.raises(EvalError, match="needs the question file"):
        evaluate("vizwiz", answers, vizwiz_fixture(tmp_path))
    write_vizwiz_submission(answers, questions, tmp_path / "vizwiz_upload.json")
    assert json.loads((tmp_path / "vizwiz_upload.json").read_text()) == [
        {"image": "VizWiz_val_00000000.jpg", "answer": "soup"},
        {"image": "VizWiz_val_00000001.jpg", "answer": "unanswerable"},
    ]


def test_generic_vqa_exact_match_and_vqa_accuracy(tmp_path):
    data = write_jsonl(
        tmp_path / "custom.jsonl",
        [
            {"question_id": "q1", "image": "1.png", "text": "Colour?", "answer": "red"},
            {"question_id": "q2", "image": "2.png", "text": "Animal?", "answers": ["cat", "kitten"]},
            {"question_id": "q3", "image": "3.png", "text": "Count?", "answer": "3"},
        ],
    )
    answers = answers_file(tmp_path / "answers.jsonl", {"q1": "Red.", "q2": "kitten"})  # q3 unanswered
    results = evaluate("vqa", answers, data)
    assert results["overall"] == pytest.approx(200 / 3) and results["overall_metric"] == "exact match (%)"
    assert "vqa_accuracy" not in results["metrics"]
    ten = write_jsonl(tmp_path / "ten.jsonl", [{"question_id": 1, "answers": ["red"] * 2 + ["blue"] * 8}])
    results = evaluate("vqa", answers_file(tmp_path / "a1.jsonl", {1: "red"}), ten)
    assert results["overall"] == pytest.approx(60.0) and results["overall_metric"] == "VQA accuracy (%)"
    assert results["metrics"]["exact_match"] == 100.0


def test_generic_vqa_on_llava_conversation_json_per_question_type(tmp_path):
    """Training-style LLaVA JSON scores as custom VQA data: the first reply is the answer, `type`/`category` the
    question type the exact match is broken down by."""
    data = write_json(
        tmp_path / "held_out.json",
        [
            {"id": "a", "image": "1.png", "type": "colour",
             "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red"}]},
            {"id": "b", "image": "2.png", "category": "colour",
             "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "blue"}]},
            {"id": "c", "image": "3.png", "type": "count",
             "conversations": [{"from": "human", "value": "<image>\nCount?"}, {"from": "gpt", "value": "two"}]},
            {"id": "d", "image": "4.png",
             "conversations": [{"from": "human", "value": "<image>\nShape?"}, {"from": "gpt", "value": "circle"}]},
        ],
    )  # fmt: skip
    questions = read_questions(data)
    assert [q.text for q in questions] == ["Colour?", "Colour?", "Count?", "Shape?"]
    assert [q.category for q in questions] == ["colour", "colour", "count", None]
    # a: "red" = "red"; b: "green" != "blue"; c: "2" and "two" both normalise to "2"; d: "circle."
    answers = answers_file(tmp_path / "answers.jsonl", {"a": "red", "b": "green", "c": "2", "d": "circle."})
    results = evaluate("vqa", answers, data)
    assert results["overall"] == 75.0
    assert results["metrics"]["per_question_type"] == {"colour": 50.0, "count": 100.0}
    assert results["metrics"]["num_questions_per_type"] == {"colour": 2, "count": 1}
    one_turn = write_json(tmp_path / "one_turn.json", [{"id": 1, "conversations": [{"from": "human", "value": "Q"}]}])
    with pytest.raises(EvalFileError, match=r"one_turn\.json: record 1: 'conversations' needs a second turn"):
        evaluate("vqa", answers, one_turn)


# ----------------------------------------------------------------------------------------------------------------
# GQA


def gqa_fixture(tmp_path):
    return write_json(
        tmp_path / "testdev_balanced_questions.json",
        {
            "201": {
                "imageId": "n1",
                "question": "Is it sunny?",
                "answer": "yes",
                "isBalanced": True,
                "types": {"structural": "verify", "semantic": "global", "detailed": "weatherVerify"},
            },
            "202": {
                "imageId": "n1",
                "question": "What colour is the car?",
                "answer": "red",
                "isBalanced": True,
                "types": {"structural": "query", "semantic": "attr", "detailed": "colorQuery"},
            },
            "203": {
                "imageId": "n2",
                "question": "Which side is the cup on?",
                "answer": "left",
                "isBalanced": True,
                "types": {"structural": "query", "semantic": "rel", "detailed": "positionQuery"},
            },
            "204": {
                "imageId": "n2",
                "question": "Is there a cup?",
                "answer": "yes",
                "isBalanced": False,
                "types": {"structural": "verify", "semantic": "obj", "detailed": "existVerify"},
            },
        },
    )


def test_gqa_exact_match_traced_through_eval_py(tmp_path):
    # scripts/convert_gqa_for_eval.py writes text.rstrip('.').lower(); GQA's eval/eval.py then scores
    # toScore(predicted == gold) over the questions with isBalanced, open = structural "query":
    #   201 "Yes."          -> "yes"          == "yes"  -> 1   (binary)
    #   202 "Red"           -> "red"          == "red"  -> 1   (open)
    #   203 "The left one." -> "the left one" != "left" -> 0   (open)
    #   204 not balanced: not scored
    #   accuracy = 2/3 = 66.67%, binary 100%, open 50%
    answers = answers_file(
        tmp_path / "answers.jsonl", {"201": "Yes.", "202": "Red", "203": "The left one.", "204": "no"}
    )
    results = evaluate("gqa", answers, gqa_fixture(tmp_path))
    metrics = results["metrics"]
    assert results["overall"] == pytest.approx(200 / 3)
    assert (metrics["binary"], metrics["open"]) == (100.0, 50.0)
    assert metrics["per_structural_type"] == {"query": 50.0, "verify": 100.0}
    assert metrics["num_questions"] == 3


def test_gqa_missing_answers_count_wrong_unless_skipped(tmp_path):
    answers = answers_file(tmp_path / "answers.jsonl", {"201": "yes", "202": "red"})
    assert evaluate("gqa", answers, gqa_fixture(tmp_path))["overall"] == pytest.approx(200 / 3)
    results = evaluate("gqa", answers, gqa_fixture(tmp_path), skip_missing=True)
    assert results["overall"] == 100.0 and results["metrics"]["num_missing"] == 1


# ----------------------------------------------------------------------------------------------------------------
# POPE


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        ("Yes, there is a dog in the image.", "yes"),
        ("No", "no"),
        ("No, there is no dog.", "no"),
        ("There is not a dog in the image.", "no"),
        ("I see no dog", "no"),
        ("Yes. No dog though.", "yes"),  # only the first sentence is read
        ("NO", "yes"),  # eval_pope.py looks for "No", "no" and "not" only
        ("Maybe", "yes"),  # anything else is yes
    ],
)
def test_pope_answer_parsing_as_eval_pope(text, expected):
    assert scorers.parse_pope_answer(text) == expected


def pope_fixture(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir(exist_ok=True)
    write_jsonl(
        folder / "coco_pope_random.json",
        [
            {
                "question_id": i,
                "image": f"COCO_val2014_{i:012d}.jpg",
                "text": "Is there a dog in the image?",
                "label": "yes" if i <= 6 else "no",
            }
            for i in range(1, 11)
        ],
    )
    write_jsonl(
        folder / "coco_pope_popular.json",
        [
            {"question_id": 1, "image": "COCO_val2014_000000000100.jpg", "text": "Is there a cat?", "label": "yes"},
            {"question_id": 2, "image": "COCO_val2014_000000000100.jpg", "text": "Is there a car?", "label": "no"},
        ],
    )
    return folder


def test_pope_confusion_table_by_hand(tmp_path):
    # random: labels 1-6 yes, 7-10 no; answers 1-4 yes (TP 4), 5-6 no (FN 2), 7 yes (FP 1), 8-10 no (TN 3)
    #   accuracy  = (TP + TN) / 10 = 7/10
    #   precision = TP / (TP + FP) = 4/5
    #   recall    = TP / (TP + FN) = 4/6 = 2/3
    #   F1        = 2 P R / (P + R) = 2 (4/5)(2/3) / (4/5 + 2/3) = (16/15) / (22/15) = 8/11
    #   yes ratio = 5/10 (eval_pope.py: yes answers over all answers)
    # popular: both right -> F1 1; overall = mean F1 over the splits = (8/11 + 1) / 2
    texts = {
        1: "Yes",
        2: "Yes, there is.",
        3: "Yes",
        4: "yes",
        5: "No.",
        6: "There is not a dog.",
        7: "Yes",
        8: "No",
        9: "No",
        10: "No, there is not.",
    }
    questions, answers = [], []
    for i, text in texts.items():
        questions.append({"question_id": i, "image": "x.jpg", "text": "q", "category": "random"})
        answers.append((i, text))
    for i, text in ((101, "Yes"), (102, "No")):  # popular's answers, numbered apart as in llava_pope_test.jsonl
        questions.append({"question_id": i, "image": "y.jpg", "text": "q", "category": "popular"})
        answers.append((i, text))
    results = evaluate(
        "pope",
        answers_file(tmp_path / "answers.jsonl", answers),
        pope_fixture(tmp_path),
        questions=write_jsonl(tmp_path / "llava_pope_test.jsonl", questions),
    )
    random = results["metrics"]["per_split"]["random"]
    assert (random["tp"], random["fp"], random["tn"], random["fn"]) == (4, 1, 3, 2)
    assert random["accuracy"] == pytest.approx(0.7) and random["precision"] == pytest.approx(0.8)
    assert random["recall"] == pytest.approx(2 / 3) and random["f1"] == pytest.approx(8 / 11)
    assert random["yes_ratio"] == pytest.approx(0.5)
    assert results["metrics"]["per_split"]["popular"]["f1"] == 1.0
    assert results["overall"] == pytest.approx(100 * (8 / 11 + 1) / 2)
    assert results["overall_metric"] == "F1 (%) averaged over the POPE splits"


def test_pope_matches_one_split_by_id_and_counts_a_missing_answer_wrong(tmp_path):
    labels = pope_fixture(tmp_path) / "coco_pope_random.json"
    # every answer right but question 6 (label yes) missing: it counts as a "no" -> FN 1
    answers = answers_file(
        tmp_path / "answers.jsonl", {i: "Yes" if i <= 5 else "No" for i in (1, 2, 3, 4, 5, 7, 8, 9, 10)}
    )
    split = evaluate("pope", answers, labels)["metrics"]["per_split"]["random"]
    assert (split["tp"], split["fn"], split["fp"], split["tn"]) == (5, 1, 0, 4)
    skipped = evaluate("pope", answers, labels, skip_missing=True)["metrics"]["per_split"]["random"]
    assert skipped["f1"] == 1.0 and skipped["num_questions"] == 9


def test_pope_metrics_traced_through_eval_pope():
    # llava/eval/eval_pope.py on preds [yes, yes, no, no] for labels [yes, no, no, yes]:
    #   TP 1 (first), FP 1 (second), TN 1 (third), FN 1 (fourth): precision 1/2, recall 1/2, F1 1/2,
    #   acc 2/4, yes_ratio 2/4 -> its last line "0.500, 0.500, 0.500, 0.500, 0.500"
    metrics = scorers.pope_metrics(["yes", "yes", "no", "no"], ["yes", "no", "no", "yes"])
    assert [metrics[k] for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")] == [0.5] * 5


def test_pope_matches_by_order_when_ids_differ_as_eval_pope_does(tmp_path):
    # eval_pope.py zips a split's answers (in answer-file order) with its label lines; ids play no part
    labels = pope_fixture(tmp_path)
    questions = [{"question_id": 500 + i, "image": "x.jpg", "text": "q", "category": "popular"} for i in (1, 2)]
    answers = answers_file(tmp_path / "answers.jsonl", {501: "No", 502: "No"})
    results = evaluate(
        "pope", answers, labels / "coco_pope_popular.json", questions=write_jsonl(tmp_path / "q.jsonl", questions)
    )
    popular = results["metrics"]["per_split"]["popular"]
    assert (popular["fn"], popular["tn"]) == (1, 1)
    with pytest.raises(EvalError, match="needs the question file"):
        evaluate("pope", answers, labels)


# ----------------------------------------------------------------------------------------------------------------
# MME


def mme_fixture(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    (root / "existence").mkdir(parents=True, exist_ok=True)  # images and their question files side by side
    (root / "existence" / "a.txt").write_text(
        "Is there a dog? Please answer yes or no.\tYes\nIs there a cat? Please answer yes or no.\tNo\n"
    )
    (root / "existence" / "b.txt").write_text(
        "Is there a car? Please answer yes or no.\tYes\nIs there a bus? Please answer yes or no.\tNo\n"
    )
    (root / "artwork" / "questions_answers_YN").mkdir(parents=True, exist_ok=True)  # questions apart from images/
    (root / "artwork" / "images").mkdir(exist_ok=True)
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Monet? Please answer yes or no.\tYes\n"
        "Is this artwork created by Dali? Please answer yes or no.\tNo\n"
    )
    (root / "code_reasoning").mkdir(exist_ok=True)
    (root / "code_reasoning" / "0020.txt").write_text(
        "Is the output 3? Please answer yes or no.\tYes\nIs the output 4? Please answer yes or no.\tNo\n"
    )
    return root


def mme_answers(tmp_path, texts):
    """LLaVA's MME answers: question_id `task/<image file>` (shared by the image's two questions), the prompt with
    the short-answer suffix after the question."""
    questions = {
        "existence/a.png": ("Is there a dog?", "Is there a cat?"),
        "existence/b.png": ("Is there a car?", "Is there a bus?"),
        "artwork/images/10002.jpg": ("Is this artwork created by Monet?", "Is this artwork created by Dali?"),
        "code_reasoning/0020.png": ("Is the output 3?", "Is the output 4?"),
    }
    rows = []
    for (question_id, pair), texts_of_image in zip(questions.items(), texts, strict=True):
        for question, text in zip(pair, texts_of_image, strict=True):
            rows.append((question_id, text, f"{question} Please answer yes or no.\n{SHORT}"))
    return answers_file(tmp_path / "answers.jsonl", rows)


def test_mme_acc_plus_by_hand(tmp_path):
    # existence: image a both right; image b "No" for a yes question -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
    # artwork: "yes, it is" right, "maybe" is neither yes nor no -> acc 1/2, acc+ 0 -> 50
    # code_reasoning: both right -> 100 + 100 = 200
    # perception = existence + artwork = 175 (the 8 perception tasks absent add nothing); cognition = 200
    answers = mme_answers(tmp_path, [("Yes", "No"), ("No", "No"), ("Yes, it is.", "Maybe"), ("Yes", "No")])
    results = evaluate("mme", answers, mme_fixture(tmp_path))
    per_task = results["metrics"]["per_task"]
    assert per_task["existence"] == {
        "acc": 75.0,
        "acc_plus": 50.0,
        "score": 125.0,
        "num_questions": 4,
        "num_images": 2,
        "num_other": 0,
    }
    assert (per_task["artwork"]["score"], per_task["artwork"]["num_other"]) == (50.0, 1)
    assert results["overall"] == 175.0 and results["metrics"]["perception"] == 175.0
    assert results["metrics"]["cognition"] == 200.0
    assert "count" in results["metrics"]["missing_tasks"]


def test_mme_traced_through_calculation_py():
    # MME's eval_tool/calculation.py, process_result on one task of 2 images (4 lines, chunked by 2):
    #   parse_pred_ans: "yes" -> yes; "No, it is not" -> prefix "no, " holds "no" -> no; "Not sure" -> "not "
    #   holds "no" -> no; "I think yes" -> prefix "i th" -> other
    #   gts [yes, no, yes, no] vs preds [yes, no, no, other]: accuracy_score -> 2/4; acc_plus: image 1 both
    #   right, image 2 none -> 1/2; task_score = 0.5 * 100 + 0.5 * 100 = 100
    items = {}
    predictions = {}
    for image, question, gold, text in (
        ("1", "Q1", "yes", "yes"),
        ("1", "Q2", "no", "No, it is not"),
        ("2", "Q3", "yes", "Not sure"),
        ("2", "Q4", "no", "I think yes"),
    ):
        key = mme_key("color", image, question)
        items[key] = MMEItem("color", image, question, gold)
        predictions[key] = text
    metrics = scorers.score_mme(predictions, items)
    assert metrics["per_task"]["color"]["score"] == 100.0 and metrics["per_task"]["color"]["num_other"] == 1
    assert [scorers.parse_mme_answer(t) for t in ("Yes", "No, it is not", "Not sure", "I think yes")] == [
        "yes",
        "no",
        "no",
        "other",
    ]


def test_mme_answers_need_their_prompt(tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "existence/a.png", "text": "Yes"}])
    with pytest.raises(EvalError, match="need their 'prompt'"):
        evaluate("mme", answers, mme_fixture(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# MMBench


def write_tsv(path, header, rows):
    path.write_text("\n".join("\t".join(map(str, row)) for row in [header, *rows]) + "\n", encoding="utf-8")
    return path


MMB_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]


def mmbench_circular_tsv(tmp_path):
    # as MMBench's legacy dev TSV: a question's circular variants are rows index + k * 10**6, options shifted
    # left by k, the answer letter moving with its option
    o = ["cat", "dog", "bird", "fish"]
    rows = [
        [0, "Which animal?", "nan", *o, "A", "recognition", "FP-S", "dev", "aGk="],
        [1000000, "Which animal?", "nan", *o[1:], o[0], "D", "recognition", "FP-S", "dev", "aGk="],
        [2000000, "Which animal?", "nan", *o[2:], *o[:2], "C", "recognition", "FP-S", "dev", "aGk="],
        [3000000, "Which animal?", "nan", *o[3:], *o[:3], "B", "recognition", "FP-S", "dev", "aGk="],
        [1, "Is it day?", "Look at the sky.", "yes", "no", "", "", "B", "scene", "CP", "dev", "aGk="],
        [1000001, "Is it day?", "Look at the sky.", "no", "yes", "", "", "A", "scene", "CP", "dev", "aGk="],
    ]
    return write_tsv(tmp_path / "mmbench_dev_20230712.tsv", MMB_HEADER, rows)


def test_mmbench_circular_eval_fails_a_question_with_one_wrong_pass(tmp_path):
    # question 0: passes 0, 10^6, 2*10^6 right, 3*10^6 answered "A" (fish) where the cat is "B" -> not counted
    # question 1: both passes right ("A." reads as A) -> counted; CircularEval = 1/2, vanilla (main rows) = 2/2
    answers = answers_file(
        tmp_path / "answers.jsonl",
        {0: "A", 1000000: "D", 2000000: "The answer is C.", 3000000: "A", 1: "B", 1000001: "A."},
    )
    results = evaluate("mmbench", answers, mmbench_circular_tsv(tmp_path))
    metrics = results["metrics"]
    assert results["overall"] == 50.0 and metrics["vanilla_accuracy"] == 100.0
    assert metrics["per_category"] == {"recognition": 0.0, "scene": 100.0}
    assert metrics["num_questions"] == 2 and metrics["num_single_pass_questions"] == 0


def test_mmbench_llava_all_rounds_rotations(tmp_path):
    # llava/eval/model_vqa_mmbench.py --all-rounds asks row 7 once per rotation of its options (round r shows them
    # shifted left by r) and eval_mmbench.py maps the letter back (option_map). The right option "bird" (C) is
    # shown as C, B, A, D in rounds 0-3.
    tsv = write_tsv(
        tmp_path / "mmbench.tsv",
        MMB_HEADER,
        [
            [7, "Which flies?", "nan", "cat", "dog", "bird", "fish", "C", "recognition", "FP-S", "dev", "aGk="],
            [8, "Which swims?", "nan", "cat", "dog", "bird", "fish", "D", "recognition", "FP-S", "dev", "aGk="],
        ],
    )
    records = [
        {"question_id": 7, "round_id": r, "prompt": "q", "text": t}
        for r, t in enumerate(["C", "B", "The answer is A.", "bird"])
    ]
    # row 8: right in rounds 0, 1, 3 (D, C, A) but "D" in round 2, where "fish" is shown as B
    records += [{"question_id": 8, "round_id": r, "prompt": "q", "text": t} for r, t in enumerate("DCDA")]
    results = evaluate("mmbench", write_jsonl(tmp_path / "answers.jsonl", records), tsv)
    assert results["overall"] == 50.0 and results["metrics"]["vanilla_accuracy"] == 100.0
    questions = formats.mmbench_questions(formats.read_mmbench_tsv(tsv), all_rounds=True)
    assert questions[1].text == "Which flies?\nA. dog\nB. bird\nC. fish\nD. cat" and questions[1].round_id == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b.", "B"),
        ("The answer is C.", "C"),
        ("dog", "B"),  # inside exactly one option
        ("a", "A"),  # a bare letter first
        ("o", None),  # inside "dog" and "fox": ambiguous
        ("Spider", None),  # no GPT judge here: unparsed is wrong
    ],
)
def test_mmbench_answer_parsing_as_auto_parse_answer(text, expected):
    assert scorers.parse_mmbench_answer(text, ("cat", "dog", "fox")) == expected


def test_mmbench_test_split_without_answers_is_refused():
    rows = {"0": MMBenchRow(0, "q", ("a", "b"), answer=None)}
    with pytest.raises(ValueError, match="OpenCompass"):
        scorers.score_mmbench({0: "A"}, rows)


# ----------------------------------------------------------------------------------------------------------------
# ScienceQA


@pytest.mark.parametrize(
    ("text", "num_choices", "expected"),
    [
        # llava/eval/eval_science_qa.py's main loop, then get_pred_idx:
        ("A", 3, 0),  # pred_text.strip() in options
        (" B ", 3, 1),
        ("B. Paris", 3, 1),  # pred_text[0] in options and pred_text[1:3] == ". "
        ("B\n", 3, 1),  # "\n" -> ". " gives "B. "
        ("The answer is C.", 3, 2),  # r'The answer is ([A-E])\.'
        ("Looking closely, the answer must be... The answer is B", 3, 1),  # r'The answer is ([A-E])'
        ("B.", 3, -1),  # neither a bare letter nor "X. ": FAILED there too
        ("Answer: B", 3, -1),
        ("D", 3, -1),  # not one of the problem's 3 choices
        ("E", 5, 4),
        ("F", 6, -1),  # options stop at E
    ],
)
def test_scienceqa_letter_extraction_as_eval_science_qa(text, num_choices, expected):
    assert scorers.parse_scienceqa_answer(text, num_choices) == expected


def scienceqa_fixture(tmp_path):
    folder = tmp_path / "scienceqa"
    folder.mkdir(exist_ok=True)
    write_json(
        folder / "problems.json",
        {
            "1": {
                "question": "Which is a mammal?",
                "choices": ["whale", "shark", "trout"],
                "answer": 0,
                "image": "image.png",
                "split": "test",
                "hint": "",
            },
            "2": {
                "question": "Which is magnetic?",
                "choices": ["iron", "wood"],
                "answer": 1,
                "image": "image.png",
                "split": "test",
                "hint": "",
            },
            "3": {
                "question": "Which is a verb?",
                "choices": ["run", "red", "rock"],
                "answer": 2,
                "image": None,
                "split": "test",
                "hint": "",
            },
            "4": {
                "question": "Which is hot?",
                "choices": ["ice", "fire"],
                "answer": 1,
                "image": "image.png",
                "split": "val",
                "hint": "",
            },
        },
    )
    write_json(folder / "pid_splits.json", {"train": [], "val": ["4"], "test": ["1", "2", "3"]})
    return folder


def test_scienceqa_img_accuracy(tmp_path):
    # test split = 1, 2, 3: 1 "A" right, 2 "A" wrong (iron is A, the answer index 1 is B), 3 "The answer is C." right
    # accuracy = 2/3; with an image: 1 right, 2 wrong -> IMG accuracy 1/2 (the paper's SQA-IMG, the overall)
    answers = answers_file(tmp_path / "answers.jsonl", {"1": "A", "2": "A", "3": "The answer is C.", "4": "B"})
    results = evaluate("scienceqa", answers, scienceqa_fixture(tmp_path))
    assert results["overall"] == 50.0
    assert results["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert results["metrics"]["num_img_questions"] == 2
    assert results["num_unmatched_answers"] == 1  # problem 4 is in val


def test_scienceqa_llava_question_file(tmp_path):
    # LLaVA's llava_test_CQM-A.json: a JSON list of conversations, read as the first human turn without <image>
    path = write_json(
        tmp_path / "llava_test_CQM-A.json",
        [
            {
                "id": "1",
                "image": "1/image.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nContext: N/A\nWhich is a mammal?\nA. whale\nB. shark"},
                    {"from": "gpt", "value": "The answer is A."},
                ],
            },
            {"id": "3", "conversations": [{"from": "human", "value": "Which is a verb?\nA. run\nB. red"}]},
        ],
    )
    questions = read_questions(path)
    assert [(q.question_id, q.image) for q in questions] == [("1", "1/image.png"), ("3", None)]
    assert questions[0].text == "Context: N/A\nWhich is a mammal?\nA. whale\nB. shark"


# ----------------------------------------------------------------------------------------------------------------
# readers and their errors


def test_read_answers_takes_llava_answer_files(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"question_id": 1, "prompt": "q?", "text": "yes", "answer_id": "x", '
        b'"model_id": "m", "metadata": {}}\n\n{"question_id": "a/b.png", "text": "no", "round_id": 2}\n'
    )
    first, second = read_answers(path)
    assert (first.question_id, first.text, first.prompt) == (1, "yes", "q?")
    assert (second.question_id, second.round_id, second.prompt) == ("a/b.png", 2, None)
    assert second.source == f"{path}:line 3"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question_id": 1, "text": "yes"', "line 2: not valid JSON"),
        ('{"question_id": 1}', "line 2: missing 'text'"),
        ('{"text": "yes"}', "line 2: missing 'question_id'"),
        ('{"question_id": [1], "text": "yes"}', "line 2: 'question_id' must be a string or an integer, got list"),
        ('{"question_id": true, "text": "yes"}', "'question_id' must be a string or an integer, got bool"),
        ('{"question_id": 1, "text": 3}', "line 2: 'text' must be a string, got int 3"),
        ('["question_id", 1]', "line 2: expected a JSON object, got list"),
    ],
)
def test_bad_answer_lines_are_named(tmp_path, line, message):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 0, "text": "ok"}\n' + line + "\n")
    with pytest.raises(EvalFileError) as error:
        read_answers(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_bad_bytes_and_missing_files_are_named(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b'{"question_id": 0, "text": "ok"}\n{"question_id": 1, "text": "\xff"}\n')
    with pytest.raises(EvalFileError, match="line 2: not UTF-8"):
        read_answers(path)
    with pytest.raises(EvalFileError, match="no such file"):
        read_answers(tmp_path / "nope.jsonl")


def test_duplicate_answers_are_refused_with_both_lines(tmp_path):
    answers = answers_file(tmp_path / "answers.jsonl", [(1, "yes"), (1, "no")])
    with pytest.raises(EvalError, match=r"two answers for the same question '1': .*line 1 and .*line 2"):
        evaluate("vqav2", answers, vqav2_fixture(tmp_path))


def test_read_questions_takes_llava_question_files(tmp_path):
    path = write_jsonl(
        tmp_path / "llava_gqa_testdev_balanced.jsonl",
        [
            {"question_id": "201", "image": "n1.jpg", "text": "Is it sunny?\n" + SHORT, "category": "default"},
            {"question_id": 7, "text": "A text-only question"},
        ],
    )
    first, second = read_questions(path)
    assert (first.question_id, first.image, first.category) == ("201", "n1.jpg", "default")
    assert (second.image, second.category) == (None, None)
    path.write_text('{"question_id": 1, "image": 5, "text": "q"}\n')
    with pytest.raises(EvalFileError, match="line 1: 'image' must be a string, got int"):
        read_questions(path)


def test_annotation_readers_on_official_layouts(tmp_path):
    vqav2 = formats.read_vqa_annotations(vqav2_fixture(tmp_path))
    assert vqav2["2"].answers == ("2", "2", *["3"] * 8) and vqav2["2"].answer_type == "number"
    textvqa = formats.read_vqa_annotations(textvqa_fixture(tmp_path))
    assert textvqa["34602"].image == "003a8ae2ef43b901" and len(textvqa["34602"].answers) == 10
    assert set(formats.read_vizwiz_annotations(vizwiz_fixture(tmp_path))) == {
        "VizWiz_val_00000000.jpg",
        "VizWiz_val_00000001.jpg",
    }
    gqa = formats.read_gqa_questions(gqa_fixture(tmp_path))
    assert (gqa["204"].is_balanced, gqa["202"].structural, gqa["202"].semantic) == (False, "query", "attr")
    pope = formats.read_pope_annotations(pope_fixture(tmp_path))
    assert list(pope) == ["popular", "random"] and [label.label for label in pope["popular"]] == ["yes", "no"]
    mme = formats.read_mme_annotations(mme_fixture(tmp_path))
    assert len(mme) == 8
    assert mme[mme_key("artwork", "10002.jpg", f"Is this artwork created by Dali?\n{SHORT}")].answer == "no"
    rows = formats.read_mmbench_tsv(mmbench_circular_tsv(tmp_path))
    assert rows["1"].options == ("yes", "no") and rows["1"].hint == "Look at the sky." and rows["0"].hint is None
    assert rows["0"].image_base64 is None
    assert formats.read_mmbench_tsv(mmbench_circular_tsv(tmp_path), keep_images=True)["0"].image_base64 == "aGk="
    sqa = formats.read_scienceqa_problems(scienceqa_fixture(tmp_path))
    assert set(sqa) == {"1", "2", "3"} and sqa["3"].has_image is False
    assert set(formats.read_scienceqa_problems(scienceqa_fixture(tmp_path) / "problems.json", split="val")) == {"4"}


def test_annotation_errors_are_named(tmp_path):
    path = write_json(tmp_path / "ann.json", {"annotations": [{"question_id": 1, "answer_type": "other"}]})
    with pytest.raises(EvalFileError, match=r"ann.json: annotations\[0\]: missing 'answers'"):
        formats.read_vqa_annotations(path)
    path = write_json(tmp_path / "other.json", {"questions": []})
    with pytest.raises(EvalFileError, match="expected VQAv2's"):
        formats.read_vqa_annotations(path)
    path = write_json(tmp_path / "gqa.json", {"5": {"question": "q", "isBalanced": True}})
    with pytest.raises(EvalFileError, match="question '5': missing 'answer'"):
        formats.read_gqa_questions(path)
    path = write_jsonl(
        tmp_path / "coco_pope_random.json", [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "maybe"}]
    )
    with pytest.raises(EvalFileError, match="line 2: 'label' must be 'yes' or 'no', got 'maybe'"):
        formats.read_pope_annotations(path)
    root = mme_fixture(tmp_path)
    (root / "existence" / "c.txt").write_text("Is there a dog? Please answer yes or no.\tYes\nno tab here\n")
    with pytest.raises(EvalFileError, match=r"c.txt: line 2: expected 'question<TAB>answer'"):
        formats.read_mme_annotations(root)
    with pytest.raises(EvalFileError, match="no MME task folder"):
        formats.read_mme_annotations(tmp_path)  # it holds the release folder, not task folders
    tsv = write_tsv(tmp_path / "bad.tsv", ["index", "A", "B"], [[0, "x", "y"]])
    with pytest.raises(EvalFileError, match="no 'question' column"):
        formats.read_mmbench_tsv(tsv)
    tsv = write_tsv(tmp_path / "bad2.tsv", MMB_HEADER, [[0, "q", "nan", "x", "y", "", "", "C", "c", "l", "dev", ""]])
    with pytest.raises(EvalFileError, match="line 2: index 0: answer 'C' is not one of its options A, B"):
        formats.read_mmbench_tsv(tsv)
    folder = scienceqa_fixture(tmp_path)
    write_json(folder / "pid_splits.json", {"test": ["1", "99"]})
    with pytest.raises(EvalFileError, match="1 test id\\(s\\) not in problems.json, e.g. '99'"):
        formats.read_scienceqa_problems(folder)


def test_evaluate_refuses_answers_that_match_nothing(tmp_path):
    answers = answers_file(tmp_path / "answers.jsonl", {"q1": "yes", "q2": "no"})
    with pytest.raises(EvalError, match="none of the 2 answers .* matches a question of"):
        evaluate("gqa", answers, gqa_fixture(tmp_path))
    with pytest.raises(EvalError, match="unknown benchmark 'okvqa'"):
        evaluate("okvqa", answers, gqa_fixture(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# prompts and the registry


def test_paper_table_8_prompts_verbatim():
    assert PAPER_EVAL_PROMPTS == {
        ("LLaVA-Bench", "MM-Vet"): None,
        ("VQAv2", "GQA", "TextVQA", "MME", "POPE"): "Answer the question using a single word or phrase.",
        ("ScienceQA", "MMBench", "SEED-Bench"): "Answer with the option’s letter from the given choices directly.",
        ("VizWiz",): "When the provided information is insufficient, respond with ‘Unanswerable’. Answer the "
        "question using a single word or phrase.",
    }
    assert benchmarks.PAPER_TRAINING_PROMPTS["A-OKVQA"] == (
        "50K",
        ("Answer with the option’s letter from the given choices directly.",),
    )
    assert benchmarks.PAPER_TRAINING_PROMPTS["TextCaps"][1] == (
        "Provide a one-sentence caption for the provided image.",
    )


def test_registry_prompts_are_the_papers():
    names = {
        "vqav2": "VQAv2",
        "gqa": "GQA",
        "textvqa": "TextVQA",
        "mme": "MME",
        "pope": "POPE",
        "scienceqa": "ScienceQA",
        "mmbench": "MMBench",
        "vizwiz": "VizWiz",
    }
    assert set(BENCHMARKS) == {*names, "vqa"}
    for name, title in names.items():
        paper = next(prompt for group, prompt in PAPER_EVAL_PROMPTS.items() if title in group)
        assert benchmarks._loose(BENCHMARKS[name].prompt) == benchmarks._loose(paper), name
    for benchmark in BENCHMARKS.values():
        assert callable(benchmark.read_annotations) and callable(benchmark.match) and callable(benchmark.score)
        assert benchmark.overall and benchmark.annotations


def test_add_response_prompt():
    assert add_response_prompt("What colour is the bus?", "vqav2") == f"What colour is the bus?\n{SHORT}"
    # already there, as in LLaVA's released question files (or with the paper's typography): unchanged
    for text in (
        f"What colour?\n{SHORT}",
        "What colour? answer the question using a single word or phrase.",
        "Which?\nA. x\nB. y\nAnswer with the option’s letter from the given choices directly.",
    ):
        benchmark = "mmbench" if "Which" in text else "gqa"
        assert add_response_prompt(text, benchmark) == text
    assert add_response_prompt("Which?\nA. x\nB. y", "scienceqa") == (
        "Which?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly."
    )
    # a short-answer question given to VizWiz gets VizWiz's prompt instead of its own
    assert add_response_prompt(f"What is this?\n{SHORT}", "vizwiz") == (
        "What is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + SHORT
    )
    # MME's questions carry "Please answer yes or no." and get the short-answer prompt after it
    assert add_response_prompt("Is there a dog? Please answer yes or no.", "mme").endswith(f"no.\n{SHORT}")


def test_results_file(tmp_path):
    answers = answers_file(tmp_path / "answers.jsonl", {"201": "yes", "202": "red", "203": "left"})
    results = evaluate("gqa", answers, gqa_fixture(tmp_path))
    path = write_results(results, tmp_path / "out")
    saved = json.loads(path.read_text())
    assert path.name == "results.json" and saved["overall"] == 100.0 and saved["benchmark"] == "gqa"
    assert saved["overall_metric"] == "accuracy (%) on the balanced questions"
    assert saved["metrics"]["accuracy"] == 100.0 and "overall" not in saved["metrics"]
    assert all(math.isfinite(value) for value in saved["metrics"]["per_semantic_type"].values())


def test_eval_core_pulls_in_neither_torch_nor_the_demo_world():
    code = (
        "import sys, minillava.train.eval; "
        "print(any(m == 'torch' or m.startswith('minillava.train.demo.run') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("module", [benchmarks, formats, scorers])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0
