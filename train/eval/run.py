"""`minillava eval`: LLaVA-1.5's evaluation protocol run on a model. The questions of LLaVA's eval question file are
asked with the benchmark's response-format prompt through the processor's chat template, answered by batched
greedy generation (left padding), appended to LLaVA's answer JSONL as they come (a killed run resumes where it
stopped), then scored against the benchmark's official annotations into `results.json` and `results.png`.

```bash
minillava eval llava-1.5-7b --benchmark gqa --questions llava_gqa_testdev_balanced.jsonl \
    --image_folder gqa/images --answers testdev_balanced_questions.json --output_dir eval/gqa
minillava eval --benchmark gqa --predictions eval/gqa/answers.jsonl --answers testdev_balanced_questions.json
```

```python
from .run import evaluate_model

results = evaluate_model("llava-1.5-7b", "gqa", "llava_gqa_testdev_balanced.jsonl", "gqa/images", "eval/gqa",
                         annotations="testdev_balanced_questions.json")
print(results["overall"])
```

Any `AutoModelForImageTextToText` folder works (minillava's, with `import minillava.modeling` registering them or
`trust_remote_code=True`, and transformers' own, e.g. llava-hf), so the numbers compare.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import logging
import math
import os
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..plots import save_png
from . import formats
from .benchmarks import (
    BENCHMARKS,
    Benchmark,
    EvalError,
    add_response_prompt,
    evaluate,
    get_benchmark,
    write_results,
    write_vizwiz_submission,
    write_vqav2_submission,
)
from .formats import Answer, EvalFileError, PathLike, Question


logger = logging.getLogger(__name__)

ANSWERS_NAME = "answers.jsonl"
RESULTS_PLOT_NAME = "results.png"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# LLaVA's model_vqa_loader.py default; the short-answer benchmarks stop long before it.
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8
# Counts, not figures: left out of the plot.
_COUNT_KEYS = {"tp", "fp", "tn", "fn"}


# ----------------------------------------------------------------------------------------------------------------
# loading


def load_model(
    model_path: str,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    quantization_config: Any = None,
) -> tuple[Any, Any]:
    """`(model, processor)` of an `AutoModelForImageTextToText` folder or Hub id, in eval mode on `device` (default:
    CUDA when there is one; `auto` spreads it with `device_map="auto"`). minillava's classes are registered first.
    A `quantization_config` (e.g. a `BitsAndBytesConfig`) quantizes it as it loads, placed on `device` then."""
    import torch
    import transformers
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import minillava.modeling  # noqa: F401  (registers the Auto classes)

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    kwargs: dict[str, Any] = {dtype_key: dtype if dtype == "auto" else getattr(torch, dtype)}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        kwargs["device_map"] = "auto" if device == "auto" else {"": device}  # quantized weights are not moved
    elif device == "auto":
        kwargs["device_map"] = "auto"
    model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs).eval()
    if "device_map" not in kwargs:
        model.to(device)
    processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    return model, processor


def read_eval_questions(path: PathLike, benchmark: str | Benchmark, all_rounds: bool = False) -> list[Question]:
    """The questions of `path`: LLaVA's eval question JSONL (or its ScienceQA JSON), or for MMBench its TSV (each
    row's question, hint and options as LLaVA's `model_vqa_mmbench` asks them; with `all_rounds` once per
    rotation of the options, its CircularEval passes)."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if Path(path).suffix.lower() == ".tsv":
        if benchmark.name != "mmbench":
            raise EvalFileError(
                path,
                f"a TSV question file is MMBench's; {benchmark.title} questions come as LLaVA's eval question JSONL",
            )
        return formats.mmbench_questions(formats.read_mmbench_tsv(path, keep_images=True), all_rounds=all_rounds)
    questions = formats.read_questions(path)
    if not questions:
        raise EvalFileError(path, "no questions in this file")
    return questions


# ----------------------------------------------------------------------------------------------------------------
# images


def _image_path(question: Question, image_folder: PathLike | None) -> Path:
    image = Path(question.image)
    if image_folder is None and not image.is_absolute():
        raise EvalError(
            f"{question.source}: question {question.question_id!r} has the image {question.image!r}: "
            "pass --image_folder, the folder its path is relative to"
        )
    return image if image_folder is None else Path(image_folder) / image


def check_images(questions: Sequence[Question], image_folder: PathLike | None) -> None:
    """Raises [`EvalError`] naming the first question whose image file is missing (before any model is loaded)."""
    for question in questions:
        if question.image and not question.extra.get("image_base64"):
            path = _image_path(question, image_folder)
            if not path.is_file():
                raise EvalError(
                    f"{question.source}: the image of question {question.question_id!r} is missing: no file {path}"
                )


def load_question_image(question: Question, image_folder: PathLike | None):
    """The PIL image of `question` (from `image_folder`, or MMBench's base64 cell), or None for a text-only one."""
    from PIL import Image

    encoded = question.extra.get("image_base64")
    if not question.image and not encoded:
        return None
    where = "its base64 image" if encoded else str(_image_path(question, image_folder))
    try:
        if encoded:
            image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        else:
            image = Image.open(_image_path(question, image_folder))
        image.load()
    except FileNotFoundError:
        raise EvalError(
            f"{question.source}: the image of question {question.question_id!r} is missing: no file {where}"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL's UnidentifiedImageError is an OSError
        raise EvalError(
            f"{question.source}: cannot read the image of question {question.question_id!r} ({where}): {error}"
        ) from None
    return image


# ----------------------------------------------------------------------------------------------------------------
# the answers file: appended line by line, resumed after a kill


def question_prompt(question: Question, benchmark: Benchmark) -> str:
    """What the model is asked for `question`: its text with the benchmark's response-format prompt."""
    return add_response_prompt(question.text, benchmark)


def _key(question_id: Any, round_id: int | None) -> tuple[str, int | None]:
    return str(question_id), round_id


def prepare_answers_file(path: PathLike) -> list[Answer]:
    """The answers already in `path` (none if it does not exist). A last line cut short by a kill is dropped from
    the file with a warning (its question is asked again); a complete last line without its newline gets one."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    if raw.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"[":
        raise EvalFileError(
            path,
            "a JSON list, not LLaVA's answer JSONL: answers cannot be appended to it (pass "
            "another answers file, or score this one without a model)",
        )
    if raw and not raw.endswith(b"\n"):
        start = raw.rfind(b"\n") + 1
        last = raw[start:]
        try:
            complete = isinstance(json.loads(last.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            complete = False
        with open(path, "r+b") as handle:
            if complete:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                handle.truncate(start)
                line_number = raw.count(b"\n") + 1
                logger.warning(
                    f"{path}: line {line_number} was cut short ({len(last)} bytes, written when "
                    "a run was killed): dropped, its question is answered again"
                )
    return formats.read_answers(path)


def answered_questions(
    answers: Sequence[Answer], questions: Sequence[Question], prompts: Sequence[str], where: str
) -> set[int]:
    """The indexes of `questions` that `answers` already answer, matched by question id, round and prompt (MME's
    two questions of an image share their id); an answer that matches no question (another question file,
    benchmark or prompt) raises [`EvalError`]."""
    by_prompt: dict[tuple, deque[int]] = defaultdict(deque)
    by_id: dict[tuple, deque[int]] = defaultdict(deque)
    for index, (question, prompt) in enumerate(zip(questions, prompts, strict=True)):
        key = _key(question.question_id, question.round_id)
        by_prompt[(*key, prompt)].append(index)
        by_id[key].append(index)
    done: set[int] = set()
    for answer in answers:
        key = _key(answer.question_id, answer.round_id)
        queue = by_id.get(key) if answer.prompt is None else by_prompt.get((*key, answer.prompt))
        while queue and queue[0] in done:
            queue.popleft()
        if not queue:
            asked = "" if answer.prompt is None else f" asked {answer.prompt!r:.80}"
            if queue is not None:
                problem = "answered already earlier in this file"
            else:
                problem = (
                    f"not among the questions of {where} as this run asks them (another question file, "
                    "benchmark or response-format prompt?)"
                )
            raise EvalError(
                f"{answer.source}: an answer to question {answer.question_id!r}{asked}, "
                f"{problem}: pass another answers file, or remove this one to start over"
            )
        done.add(queue.popleft())
    return done


def unanswered(
    path: PathLike,
    questions: Sequence[Question],
    benchmark: str | Benchmark,
    limit: int | None = None,
    where: str = "the questions",
) -> int:
    """How many of `questions` (the first `limit`) the answers file `path` does not answer yet (its torn last line,
    if any, dropped first, as [`generate_answers`] does)."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    path = Path(path)
    selected = len(questions) if limit is None else min(limit, len(questions))
    if not path.exists():
        return selected
    prompts = [question_prompt(question, benchmark) for question in questions]
    with _locked_append(path):
        done = answered_questions(prepare_answers_file(path), questions, prompts, where)
    return sum(index not in done for index in range(selected))


@contextlib.contextmanager
def _locked_append(path: Path) -> Iterator[int]:
    """A file descriptor appending to `path`, held with an exclusive lock: two runs never write one answers file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EvalError(
                    f"{path} is being written by another `minillava eval`: wait for it, or pass another answers file"
                ) from None
        yield fd
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ----------------------------------------------------------------------------------------------------------------
# generation


def turn_separator_of(processor: Any) -> str | None:
    """The text closing an assistant turn where it is not EOS (MiniGPT-4's `###`): the processor's `turn_separator`,
    or the one of the shipped chat template it uses."""
    from minillava.processing.chat_templates import turn_separator

    separator = getattr(processor, "turn_separator", None)
    return separator or turn_separator(getattr(processor, "chat_template", None))


def generation_kwargs(model: Any, processor: Any, max_new_tokens: int) -> dict[str, Any]:
    """`model.generate` kwargs for greedy decoding of at most `max_new_tokens` tokens that stops at EOS and at the
    template's turn separator ([`turn_separator_of`]), with EOS as the pad id where neither tokenizer nor model has
    one."""
    tokenizer = processor.tokenizer
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "num_beams": 1,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    separator = turn_separator_of(processor)
    if separator:
        kwargs.update(stop_strings=[separator], tokenizer=tokenizer)
    if tokenizer.pad_token_id is None and model.generation_config.pad_token_id is None:
        eos = model.generation_config.eos_token_id
        kwargs["pad_token_id"] = eos[0] if isinstance(eos, list) else eos
    return kwargs


def model_inputs(model: Any, processor: Any, texts: Sequence[str], images: Sequence[Any]) -> Any:
    """The processor's padded tensors for chat-templated `texts` and their `images` (in placeholder order), on the
    model's device, pixels in its dtype; BOS is not added again where the template wrote it."""
    tokenizer = processor.tokenizer
    call_kwargs: dict[str, Any] = {"padding": True, "return_tensors": "pt"}
    if tokenizer.bos_token and texts[0].startswith(tokenizer.bos_token):
        call_kwargs["add_special_tokens"] = False  # the template wrote BOS, as transformers' own check
    inputs = processor(images=list(images) or None, text=list(texts), **call_kwargs).to(model.device)
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def _messages(prompt: str, has_image: bool) -> list[dict]:
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


@dataclass
class GenerationSummary:
    """What [`generate_answers`] did: questions asked in all, answers found from an earlier run, answers written."""

    answers_file: str
    num_questions: int
    num_resumed: int
    num_generated: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def generate_answers(
    model: Any,
    processor: Any,
    questions: PathLike | Sequence[Question],
    image_folder: PathLike | None,
    benchmark: str | Benchmark,
    output_file: PathLike,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    model_id: str | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> GenerationSummary:
    """Answers `questions` (the first `limit`) with greedy generation, `batch_size` at a time with left padding,
    appending each answer to `output_file` (LLaVA's answer JSONL: `question_id`, `prompt`, `text`, `answer_id`,
    `model_id`, `metadata`, and `round_id` for MMBench rotations) as soon as its batch is done. Questions already
    answered in `output_file` are skipped, so a killed run continues where it stopped.

    Each question is its text with the benchmark's response-format prompt, in the processor's chat template (with
    one image, or none for text-only questions). Generation stops at EOS and at the template's turn separator
    (MiniGPT-4's `###`), which is cut from the answer.
    """
    import torch
    from tqdm.auto import tqdm

    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    where = str(questions) if isinstance(questions, str | os.PathLike) else "the questions"
    question_list = (
        read_eval_questions(questions, benchmark) if isinstance(questions, str | os.PathLike) else list(questions)
    )
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be at least 1, got {batch_size} and {max_new_tokens}")
    prompts = [question_prompt(question, benchmark) for question in question_list]
    output_file = Path(output_file)
    model_id = model_id or Path(str(getattr(model.config, "_name_or_path", "") or "model")).name
    started = time.perf_counter()
    with _locked_append(output_file) as fd:
        existing = prepare_answers_file(output_file)
        done = answered_questions(existing, question_list, prompts, where)
        selected = range(len(question_list) if limit is None else min(limit, len(question_list)))
        pending = [index for index in selected if index not in done]
        check_images([question_list[index] for index in pending], image_folder)
        summary = GenerationSummary(str(output_file), len(selected), len(selected) - len(pending), 0, 0.0)
        if pending and summary.num_resumed:
            logger.info(
                "%s: %d of the %d questions are answered already; asking the other %d",
                output_file,
                summary.num_resumed,
                summary.num_questions,
                len(pending),
            )

        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        separator = turn_separator_of(processor)
        generate_kwargs = generation_kwargs(model, processor, max_new_tokens)

        bar = tqdm(
            total=len(selected),
            initial=summary.num_resumed,
            desc=f"{benchmark.name}",
            unit="question",
            disable=not progress,
            dynamic_ncols=True,
        )
        with bar, torch.inference_mode():
            for start in range(0, len(pending), batch_size):
                batch = pending[start : start + batch_size]
                images = [load_question_image(question_list[index], image_folder) for index in batch]
                texts = [
                    processor.apply_chat_template(
                        _messages(prompts[index], image is not None), add_generation_prompt=True
                    )
                    for index, image in zip(batch, images, strict=True)
                ]
                inputs = model_inputs(model, processor, texts, [image for image in images if image is not None])
                generated = model.generate(**inputs, **generate_kwargs)
                outputs = processor.batch_decode(
                    generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
                )
                lines = []
                for index, text in zip(batch, outputs, strict=True):
                    if separator and separator in text:
                        text = text[: text.index(separator)]
                    question = question_list[index]
                    record = {
                        "question_id": question.question_id,
                        "prompt": prompts[index],
                        "text": text.strip(),
                        "answer_id": uuid.uuid4().hex,
                        "model_id": model_id,
                        "metadata": {},
                    }
                    if question.round_id is not None:
                        record["round_id"] = question.round_id
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
                for line in lines:  # one write per answer: a kill never leaves half of an earlier line
                    _write_all(fd, line.encode("utf-8"))
                with contextlib.suppress(OSError):
                    os.fsync(fd)
                summary.num_generated += len(batch)
                bar.update(len(batch))
    summary.seconds = round(time.perf_counter() - started, 2)
    return summary


# ----------------------------------------------------------------------------------------------------------------
# the plot


def _figures(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    out = []
    for key, value in metrics.items():
        if key.startswith("num_") or key in _COUNT_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, Mapping):
            out += _figures(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and math.isfinite(value):
            out.append((f"{prefix}{key}", float(value)))
    return out


def save_results_plot(results: Mapping[str, Any], path: PathLike) -> Path | None:
    """The detailed metrics of `results` ([`evaluate`]'s) as bar charts, one panel per group (the headline figures,
    then each breakdown), in a PNG at `path`; None (with a warning) when matplotlib is missing or drawing fails."""
    metrics = results.get("metrics", {})
    panels = [
        (
            "headline",
            [("overall", float(results["overall"]))]
            + _figures({k: v for k, v in metrics.items() if not isinstance(v, Mapping)}),
        )
    ]
    panels += [(key, _figures(value)) for key, value in metrics.items() if isinstance(value, Mapping)]
    panels = [(name, bars[:60]) for name, bars in panels if bars]
    heights = [max(1.2, 0.25 * len(bars) + 0.9) for _, bars in panels]
    total = sum(heights) + 0.6

    def draw(figure) -> None:
        longest = max(len(label) for _, bars in panels for label, _ in bars)
        # margins from the label lengths (inches), not tight_layout, which draws the whole figure once more
        grid = figure.add_gridspec(
            len(panels),
            1,
            height_ratios=heights,
            left=min(0.6, (0.2 + 0.065 * longest) / 8),
            right=0.95,
            top=1 - 0.55 / total,
            bottom=0.35 / total,
            hspace=0.9 / max(heights),
        )
        for row, (name, bars) in enumerate(panels):
            axes = figure.add_subplot(grid[row])
            labels, values = zip(*bars, strict=True)
            positions = range(len(bars))
            axes.barh(positions, values, color="#d62728" if row == 0 else "#1f77b4")
            axes.set_yticks(list(positions), labels, fontsize=8)
            axes.invert_yaxis()
            for position, value in zip(positions, values, strict=True):
                axes.annotate(
                    f"{value:.4g}",
                    (value, position),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=7,
                )
            axes.set_title(name, fontsize=9, loc="left")
            axes.grid(axis="x", alpha=0.3)
            axes.margins(x=0.15)
            if min(values) >= 0:
                axes.set_xlim(0, max(values) * 1.15 or 1.0)
        overall = results.get("overall")
        figure.suptitle(
            f"{results.get('benchmark', '')}: {results.get('overall_metric', 'overall')} = {overall:.2f}"
            if isinstance(overall, int | float)
            else str(results.get("benchmark", "")),
            fontsize=10,
        )

    return save_png(path, draw, figsize=(8, total), dpi=100)


# ----------------------------------------------------------------------------------------------------------------
# the whole evaluation


def default_annotations(
    benchmark: Benchmark, questions: PathLike | None, question_list: Sequence[Question] | None = None
) -> PathLike | None:
    """What to score against when `--answers` is not given: the question file itself for the generic `vqa`
    benchmark when its lines hold `answer` or `answers`, or it is LLaVA conversation JSON (all of them are checked
    when it is read), and MMBench's
    TSV; otherwise nothing (answers are written, not scored)."""
    if questions is None:
        return None
    if benchmark.name == "mmbench" and Path(questions).suffix.lower() == ".tsv":
        return questions
    if benchmark.name == "vqa":
        if question_list is None:
            question_list = read_eval_questions(questions, benchmark)
        if any(key in question.extra for question in question_list for key in ("answer", "answers", "conversations")):
            return questions
    return None


def score_answers(
    benchmark: str | Benchmark,
    predictions: PathLike,
    annotations: PathLike | Any,
    output_dir: PathLike,
    questions: PathLike | Sequence[Question] | None = None,
    skip_missing: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Scores an answers file ([`evaluate`]), adds `extra`, and writes `results.json` and `results.png` into
    `output_dir`; returns the results."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    if isinstance(questions, str | os.PathLike):
        questions = read_eval_questions(questions, benchmark)
    results = evaluate(benchmark, predictions, annotations, questions=questions, skip_missing=skip_missing)
    results.update(extra or {})
    write_results(results, output_dir)
    save_results_plot(results, Path(output_dir) / RESULTS_PLOT_NAME)
    return results


def evaluate_model(
    model: str | Any,
    benchmark: str | Benchmark,
    questions: PathLike,
    image_folder: PathLike | None,
    output_dir: PathLike,
    annotations: PathLike | None = None,
    predictions: PathLike | None = None,
    processor: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    limit: int | None = None,
    skip_missing: bool = False,
    all_rounds: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """`minillava eval` from Python: answers `questions` with `model` (a folder, Hub id, or a loaded model with its
    `processor`) into `predictions` (default `output_dir/answers.jsonl`, resumed if it holds answers), then scores
    them against `annotations` (the benchmark's official file; see [`default_annotations`]) into
    `output_dir/results.json` and `results.png`. Returns the results; without annotations, VQAv2 and VizWiz get
    their server's submission file instead and the returned dict has `overall` None."""
    benchmark = get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark
    question_list = read_eval_questions(questions, benchmark, all_rounds=all_rounds)
    if annotations is None:
        annotations = default_annotations(benchmark, questions, question_list)
    parsed = benchmark.read_annotations(annotations) if annotations is not None else None  # bad files fail first
    selected = question_list if limit is None else question_list[:limit]
    predictions = Path(predictions) if predictions is not None else Path(output_dir) / ANSWERS_NAME
    if not isinstance(model, str | os.PathLike) and processor is None:
        raise ValueError("a loaded model needs its processor")
    model_id = Path(str(model)).name if isinstance(model, str | os.PathLike) else None
    left = unanswered(predictions, question_list, benchmark, limit, where=str(questions))
    if left == 0:  # a finished run scored again: no model to load
        logger.info("%s answers every question already: scoring it", predictions)
        summary = GenerationSummary(str(predictions), len(selected), len(selected), 0, 0.0)
    else:
        check_images(selected, image_folder)  # before a model is loaded
        if isinstance(model, str | os.PathLike):
            model, processor = load_model(str(model), dtype, device, trust_remote_code, attn_implementation)
        summary = generate_answers(
            model,
            processor,
            question_list,
            image_folder,
            benchmark,
            predictions,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            model_id=model_id,
            limit=limit,
            progress=progress,
        )
    if model_id is None:
        model_id = Path(str(getattr(model.config, "_name_or_path", "") or "model")).name
    extra = {
        "model": model_id,
        "questions_file": str(questions),
        "image_folder": None if image_folder is None else str(image_folder),
        "limit": limit,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "generation": summary.to_dict(),
    }
    if parsed is None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        submission = None
        if benchmark.name in ("vqav2", "vizwiz"):
            submission = Path(output_dir) / f"{benchmark.name}_submission.json"
            writer = write_vqav2_submission if benchmark.name == "vqav2" else write_vizwiz_submission
            writer(predictions, selected, submission)
        return {
            "benchmark": benchmark.name,
            "overall": None,
            "answers_file": str(predictions),
            "submission_file": None if submission is None else str(submission),
            **extra,
        }
    return score_answers(
        benchmark,
        predictions,
        parsed,
        output_dir,
        questions=question_list,
        skip_missing=skip_missing or limit is not None,
        extra={**extra, "annotations": str(annotations)},
    )


# ----------------------------------------------------------------------------------------------------------------
# the command


def add_loading_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how a model is loaded (`--dtype`, `--device`, `--attn_implementation`,
    `--trust_remote_code`), shared by the commands that run one (`eval`, `chat`, `web`)."""
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="weights dtype (default: as saved)")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... or auto (device_map='auto'); default: cuda if there is one"
    )
    parser.add_argument("--attn_implementation", "--attn-implementation", help="sdpa, eager, flash_attention_2, ...")
    parser.add_argument(
        "--trust_remote_code",
        "--trust-remote-code",
        action="store_true",
        help="run the folder's own code (needed for minillava folders where minillava is not installed)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava eval",
        description=__doc__.split("\n\n")[0],
        epilog="benchmarks (--answers takes):\n"
        + "\n".join(f"  {name:<10} {benchmark.annotations}" for name, benchmark in BENCHMARKS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="an AutoModelForImageTextToText folder or Hub id (minillava or transformers' own); "
        "leave it out to score --predictions without a model",
    )
    parser.add_argument(
        "--benchmark",
        required=True,
        type=str.lower,
        choices=list(BENCHMARKS),
        help="which benchmark: its response-format prompt, annotation reader and scorer",
    )
    parser.add_argument("--questions", help="LLaVA's eval question JSONL (question_id, image, text); MMBench: its TSV")
    parser.add_argument("--image_folder", "--image-folder", help="the folder the questions' image paths are in")
    parser.add_argument(
        "--answers",
        help="the benchmark's official annotation file (see below); default: the "
        "question file for vqa and MMBench's TSV, else none (answers only)",
    )
    parser.add_argument(
        "--predictions",
        help="the answers JSONL (LLaVA's format) to write and resume (default: "
        "OUTPUT_DIR/answers.jsonl); without MODEL, scored as it is",
    )
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        help="where answers.jsonl, results.json and results.png go (default: the --predictions file's folder)",
    )
    parser.add_argument(
        "--batch_size",
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"questions per generate call (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS}, as LLaVA's scripts)",
    )
    add_loading_arguments(parser)
    parser.add_argument("--limit", type=int, help="ask only the first N questions (scored on those alone)")
    parser.add_argument(
        "--skip_missing",
        "--skip-missing",
        action="store_true",
        help="score only the questions answered (default: unanswered ones count as wrong)",
    )
    parser.add_argument(
        "--all_rounds",
        "--all-rounds",
        action="store_true",
        help="MMBench TSV: ask each question once per rotation of its options (CircularEval)",
    )
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")
    return parser


def _print_results(results: Mapping[str, Any], output_dir: PathLike) -> None:
    if results.get("overall") is None:
        print(f"Answers in {results['answers_file']} (no --answers: not scored)")
        if results.get("submission_file"):
            print(f"Submission file for the evaluation server: {results['submission_file']}")
        return
    print(f"{results['benchmark']}: {results['overall_metric']} = {results['overall']:.2f}")
    if results.get("num_unmatched_answers"):
        print(
            f"  {results['num_unmatched_answers']} answers matched no annotated question, e.g. "
            f"{', '.join(results['unmatched_examples'])}"
        )
    print(f"Results in {Path(output_dir) / 'results.json'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`minillava eval MODEL --benchmark NAME --questions FILE --image_folder DIR [--answers FILE]`, or
    `minillava eval --benchmark NAME --predictions FILE --answers FILE` to score answers without a model."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.model is None and args.predictions is None:
        parser.error("give MODEL to answer the questions, or --predictions to score an answers file")
    if args.model is not None and args.questions is None:
        parser.error("MODEL needs --questions (LLaVA's eval question file)")
    for name in ("batch_size", "max_new_tokens", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.output_dir is None:
        if args.predictions is None:
            parser.error("give --output_dir (or --predictions, whose folder it then is)")
        args.output_dir = str(Path(args.predictions).parent)
    benchmark = get_benchmark(args.benchmark)
    try:
        if args.model is None:
            questions = (
                None if args.questions is None else read_eval_questions(args.questions, benchmark, args.all_rounds)
            )
            annotations = args.answers or default_annotations(benchmark, args.questions, questions)
            if annotations is None:
                parser.error(f"scoring needs --answers: {benchmark.annotations}")
            results = score_answers(
                benchmark,
                args.predictions,
                annotations,
                args.output_dir,
                questions=questions,
                skip_missing=args.skip_missing,
                extra={"questions_file": args.questions},
            )
        else:
            results = evaluate_model(
                args.model,
                benchmark,
                args.questions,
                args.image_folder,
                args.output_dir,
                annotations=args.answers,
                predictions=args.predictions,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                dtype=args.dtype,
                device=args.device,
                trust_remote_code=args.trust_remote_code,
                attn_implementation=args.attn_implementation,
                limit=args.limit,
                skip_missing=args.skip_missing,
                all_rounds=args.all_rounds,
                progress=not args.no_progress,
            )
    except (EvalError, EvalFileError) as error:
        raise SystemExit(f"minillava eval: {error}") from None
    _print_results(results, args.output_dir)
    return results


__all__ = [
    "add_loading_arguments",
    "ANSWERS_NAME",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MAX_NEW_TOKENS",
    "DTYPES",
    "RESULTS_PLOT_NAME",
    "GenerationSummary",
    "answered_questions",
    "check_images",
    "default_annotations",
    "evaluate_model",
    "generate_answers",
    "generation_kwargs",
    "load_model",
    "load_question_image",
    "main",
    "make_parser",
    "model_inputs",
    "prepare_answers_file",
    "question_prompt",
    "read_eval_questions",
    "save_results_plot",
    "score_answers",
    "turn_separator_of",
    "unanswered",
]
