"""Training data as TRL conversational vision rows: LLaVA JSON, caption JSON, cc_sbu_align, HF messages + images."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image as PILImage


logger = logging.getLogger(__name__)

DATASET_FORMATS = ("llava", "cc_sbu_align", "messages")
IMAGE_PLACEHOLDER = "<image>"
ROLES = ("system", "user", "assistant")
# LLaVA's `conversations[].from` values
LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# MiniGPT-4's `prompts/alignment.txt`, the instructions of its stage 2 on cc_sbu_align (`<Img><ImageHere></Img> ` is
# written by the chat template from the image part).
MINIGPT4_ALIGNMENT_PROMPTS = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)
# How many skipped samples (and duplicated ids) are listed in the log; all skipped samples go to
# `skipped_samples.json`.
MAX_LOGGED_SAMPLES = 50
# The image size limits, checked from the header before any pixel is decoded ([`check_image_size`]). LLaVA pads an
# image to a square of its longest side before resizing it, so the memory an image takes is max(width, height)^2
# pixels, not width * height (which is all PIL's decompression-bomb check bounds): a 60000x2 strip pads to 10 GiB of
# RGB. 10000^2 pixels is 300 MB of RGB. Beyond a 50:1 aspect ratio the resized image is mostly padding, the image a
# sliver of a pixel or two.
MAX_PADDED_PIXELS = 10_000 * 10_000
MAX_ASPECT_RATIO = 50
# How many records `infer_format` reads to tell a file's format (one bad record does not decide it).
FORMAT_INFERENCE_RECORDS = 16
# How many samples the collator draws to replace a batch whose every sample failed to decode before giving up.
MAX_REPLACEMENT_DRAWS = 64


class BadSampleError(ValueError):
    """A training sample that cannot be used; the message names it by id and by where it comes from.

    `kind` sorts the problems in the skip report: "invalid record", "no assistant turn", "placeholder mismatch",
    "image outside a user turn", "image outside folder", "missing image", "unreadable image", "image size",
    "no image", "too long".
    """

    def __init__(self, message: str, kind: str = "invalid record"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SkippedSample:
    """A sample left out of training, and why."""

    id: str
    source: str
    kind: str
    reason: str

    def __str__(self) -> str:
        return f"sample {self.id!r} ({self.source}): {self.reason}"


@dataclass
class SkipReport:
    """The samples left out of a dataset: found before training starts, and those whose images fail to decode when
    their batch is built ([`DataCollatorWithSampleChecks`])."""

    total: int
    skipped: list[SkippedSample] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.skipped)

    def counts(self) -> dict[str, int]:
        """Skipped samples per kind of problem."""
        return dict(Counter(sample.kind for sample in self.skipped))

    def summary(self) -> str:
        """One paragraph: how many samples are skipped, per kind, and which (the first ones)."""
        if not self.skipped:
            return f"All {self.total} samples are usable."
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.counts().items()))
        lines = [f"Skipping {len(self.skipped)} of {self.total} samples ({kinds}):"]
        lines += [f"  - {sample}" for sample in self.skipped[:MAX_LOGGED_SAMPLES]]
        if len(self.skipped) > MAX_LOGGED_SAMPLES:
            lines.append(f"  ... and {len(self.skipped) - MAX_LOGGED_SAMPLES} more")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> None:
        """Writes every skipped sample to a JSON file, atomically (a temporary file renamed over it)."""
        path = Path(path)
        records = [sample.__dict__ for sample in self.skipped]
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"total": self.total, "skipped": records}, indent=1))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SkipReport:
        """The report a [`save`] wrote."""
        data = json.loads(Path(path).read_text())
        return cls(total=data["total"], skipped=[SkippedSample(**record) for record in data["skipped"]])

    def merge(self, other: SkipReport) -> None:
        """Adds the samples of `other` this report does not have yet."""
        known = set(self.skipped)
        self.skipped += [sample for sample in other.skipped if sample not in known]

    def add(self, sample: SkippedSample, path: str | os.PathLike | None = None) -> None:
        """Adds a sample (once); with `path`, merges this report with that file's and rewrites the file when that
        changes it, under a lock.

        Data loader workers are processes, each with its own copy of the report: the file is where their skips
        meet (and the main process reads them back, [`DataCollatorWithSampleChecks.skip_report`]).
        """
        if path is None:
            self.merge(SkipReport(self.total, [sample]))
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(f".{path.name}.lock")):
            in_file = SkipReport.load(path).skipped if path.is_file() else []
            self.merge(SkipReport(self.total, in_file))
            self.merge(SkipReport(self.total, [sample]))
            if len(self.skipped) != len(in_file):
                self.save(path)


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock between processes (`fcntl.flock`; none where there is no fcntl)."""
    try:
        import fcntl
    except ImportError:  # Windows: data loader workers there are rare; the last writer wins
        fcntl = None
    with open(lock_file, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _sample_features():
    from datasets import Features, Image, List, Value

    return Features(
        {
            "id": Value("string"),
            "source": Value("string"),
            "messages": List(
                {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
            ),
            "images": List(Image(decode=False)),
            "error": Value("string"),
            "error_kind": Value("string"),
        }
    )


def _printable(text: str) -> str:
    """`text` with lone surrogates written as `\\udXXX` escapes (Arrow strings, and the log, need valid Unicode)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _row(sample_id: str, source: str, messages=None, images=None, error: tuple[str, str] | None = None) -> dict:
    kind, reason = error if error is not None else (None, None)
    return {
        "id": _printable(str(sample_id)),
        "source": _printable(source),
        "messages": messages if error is None else [],
        "images": images if error is None else [],
        "error": None if reason is None else _printable(reason),
        "error_kind": kind,
    }


_SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_unicode(value: Any, where: str = "") -> str | None:
    """Why a decoded JSON value is not valid Unicode text (a lone surrogate from a `\\ud800` escape, or an invalid
    UTF-8 byte, which reading with `surrogateescape` keeps as one), with where in the value; None if it is."""
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        if match is None:
            return None
        code = ord(match.group())
        what = f"lone surrogate \\u{code:04x}"
        if 0xDC80 <= code <= 0xDCFF:
            what = f"invalid UTF-8 byte 0x{code - 0xDC00:02x} (or a {what})"
        return f"text is not valid Unicode: {what} at character {match.start()} of {where or 'the record'}"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = invalid_unicode(key, f"a key of {where or 'the record'}")
            problem = problem or invalid_unicode(item, f"{where}.{key}" if where else str(key))
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = invalid_unicode(item, f"{where}[{index}]")
            if problem is not None:
                return problem
    return None


def split_placeholders(text: str) -> list[dict[str, Any]]:
    """A text as content parts, an image part where each `<image>` is written.

    Text around a placeholder is stripped, as LLaVA's `preprocess_multimodal` does (`"<image>\\nWhat is it?"` gives
    an image part and `"What is it?"`); a text without placeholder is kept as it is.
    """
    pieces = text.split(IMAGE_PLACEHOLDER)
    if len(pieces) == 1:
        return [{"type": "text", "text": text}]
    parts = []
    for index, piece in enumerate(pieces):
        if index:
            parts.append({"type": "image", "text": None})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def normalize_messages(messages: Any, num_images: int) -> list[dict[str, Any]]:
    """Messages in TRL's conversational vision format (`content` as typed parts), checked.

    String contents and text parts have their `<image>` placeholders turned into image parts in place. When no
    message holds a placeholder, the images go before the first user message's content (TRL's
    `prepare_multimodal_messages` convention). Raises `BadSampleError` (with a kind) on a malformed conversation, a
    conversation without assistant answer, an image in an assistant turn, or a placeholder count that differs from
    the number of images.
    """
    if not isinstance(messages, list) or not messages:
        raise BadSampleError("`messages` is missing or empty")
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            role = message.get("role") if isinstance(message, dict) else type(message).__name__
            raise BadSampleError(f"message {index} has role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        if isinstance(content, str):
            parts = split_placeholders(content)
        elif isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text" and isinstance(part.get("text"), str):
                    parts += split_placeholders(part["text"])
                elif kind in ("image", "image_url"):
                    parts.append({"type": "image", "text": None})
                else:
                    raise BadSampleError(f"message {index} has a content part {part!r}")
        else:
            raise BadSampleError(f"message {index} has no text content")
        if message["role"] != "user" and any(part["type"] == "image" for part in parts):
            raise BadSampleError(f"message {index} ({message['role']}) holds an image", "image outside a user turn")
        normalized.append({"role": message["role"], "content": parts})

    placeholders = sum(part["type"] == "image" for message in normalized for part in message["content"])
    if placeholders == 0 and num_images:
        first_user = next((m for m in normalized if m["role"] == "user"), None)
        if first_user is None:
            raise BadSampleError("the sample has images but no user turn")
        first_user["content"] = [{"type": "image", "text": None}] * num_images + first_user["content"]
    elif placeholders != num_images:
        more_or_fewer = "more" if placeholders > num_images else "fewer"
        raise BadSampleError(
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {num_images} image(s) ({more_or_fewer} "
            "placeholders than images)",
            "placeholder mismatch",
        )
    if not any(
        message["role"] == "assistant"
        and any(part["type"] == "text" and part["text"].strip() for part in message["content"])
        for message in normalized
    ):
        raise BadSampleError(
            "no assistant turn with text to learn from (every label would be masked)", "no assistant turn"
        )
    return normalized


def _image_ref(value: Any, image_folder: Path | None, confine: bool = False) -> dict[str, Any]:
    """An image reference `{"bytes", "path"}` (what `datasets.Image(decode=False)` stores) for a path or a ref;
    with `confine`, a path must lie inside `image_folder` ([`_resolve`])."""
    if isinstance(value, (str, os.PathLike)):
        return {"bytes": None, "path": str(_resolve(value, image_folder, confine))}
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes") is None and value.get("path"):
            return {"bytes": None, "path": str(_resolve(value["path"], image_folder, confine))}
        return {"bytes": value.get("bytes"), "path": value.get("path")}
    if isinstance(value, PILImage.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}
    raise BadSampleError(f"an image is given as {type(value).__name__}, not a path or an image")


def _resolve(path: str | os.PathLike, image_folder: Path | None, confine: bool = False) -> Path:
    """`path` relative to `image_folder` (an absolute path as it is); with `confine`, one that lies outside the
    folder (`../x.png`, `/elsewhere/x.png`) raises `BadSampleError`.

    The check is on the normalized path (`os.path.normpath`), symlinks not followed: a folder whose entries are links
    to other disks (LLaVA's `playground/data/coco -> /datasets/coco`) holds its images; `..` and absolute paths
    elsewhere are refused.
    """
    relative = Path(path)
    full = relative if relative.is_absolute() or image_folder is None else image_folder / relative
    if confine and image_folder is not None:
        root = os.path.normpath(os.path.abspath(image_folder))
        if os.path.commonpath([root, os.path.normpath(os.path.abspath(full))]) != root:
            raise BadSampleError(
                f"image path {relative} lies outside --image_folder {image_folder}; pass "
                "--allow_images_outside_folder if the dataset means it",
                "image outside folder",
            )
    return full


# Reading JSON / JSONL with the line each record starts on, so that a bad sample can be found in its file.


def _json_array_records(text: str, start: int, path: str) -> Iterator[tuple[int, Any]]:
    """`(line, record)` for each element of the JSON array that starts at `text[start]`."""
    decoder = json.JSONDecoder()
    whitespace = re.compile(r"\s*")
    position = whitespace.match(text, start).end()
    if text[position : position + 1] != "[":
        raise ValueError(f"{path}: expected a JSON array of records")
    position, line, counted = position + 1, 1, 0
    while True:
        position = whitespace.match(text, position).end()
        if text[position : position + 1] == "]":
            return
        line += text.count("\n", counted, position)
        counted = position
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
        yield line, record
        position = whitespace.match(text, position).end()
        if text[position : position + 1] == ",":
            position += 1
        elif text[position : position + 1] != "]":
            raise ValueError(f"{path}:{line + text.count(chr(10), counted, position)}: expected ',' or ']'")


def iter_json_records(path: str | os.PathLike, key: str | None = None) -> Iterator[tuple[int, Any]]:
    """`(line, record)` for each record of a JSON array file, a JSON object's `key` array, or a JSONL file.

    A UTF-8 byte order mark is skipped. Invalid UTF-8 is kept as lone surrogates (`surrogateescape`), for
    [`invalid_unicode`] to name the record; a JSONL line that is not JSON gives a `BadSampleError` as its record.
    """
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "rb") as file:
            for line, raw in enumerate(file, start=1):
                text = raw.decode("utf-8", "surrogateescape")
                text = text.removeprefix("\ufeff") if line == 1 else text
                if text.strip():
                    try:
                        yield line, json.loads(text)
                    except json.JSONDecodeError as error:
                        yield line, BadSampleError(f"invalid JSON ({error.msg})")
        return
    text = Path(path).read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    start = 0
    if key is not None:
        match = re.match(rf'\s*\{{\s*"{re.escape(key)}"\s*:', text)
        if match is None:  # the array is not the first key: no line numbers
            records = json.loads(text)[key]
            yield from ((0, record) for record in records)
            return
        start = match.end()
    yield from _json_array_records(text, start, path)


def _where(path: str | os.PathLike, line: int, index: int) -> str:
    return f"{path}:{line}" if line else f"{path} record {index}"


def _file_records(
    path: str | os.PathLike, id_key: str = "id", key: str | None = None
) -> Iterator[tuple[str, str, Any]]:
    """`(source, sample id, record)` for each record of a JSON / JSONL file ([`iter_json_records`]); the record is a
    `BadSampleError` for a line that is not JSON or a record whose text is not valid Unicode."""
    for index, (line, record) in enumerate(iter_json_records(path, key)):
        sample_id = record.get(id_key, index) if isinstance(record, dict) else index
        problem = None if isinstance(record, BadSampleError) else invalid_unicode(record)
        yield _where(path, line, index), str(sample_id), BadSampleError(problem) if problem else record


# The adapters: each gives a `datasets.Dataset` of `id`, `source`, `messages`, `images` (refs), `error`, `error_kind`.


def llava_rows(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    allow_images_outside_folder: bool = False,
) -> list[dict]:
    """LLaVA conversation JSON (`llava_v1_5_mix665k.json`, LCS-558K's `blip_laion_cc_sbu_558k.json`, ...).

    Each record is `{"id", "image" (optional, a path or a list of paths relative to `image_folder`),
    "conversations": [{"from": "human" | "gpt", "value": ...}, ...]}`; `<image>` marks where each image goes.
    Images are relative to `image_folder` (LLaVA's `--image_folder`), else to the JSON file's folder. With an
    `image_folder`, a path that lies outside it is a bad sample unless `allow_images_outside_folder`.
    """
    folder = Path(image_folder) if image_folder is not None else Path(path).resolve().parent
    confine = image_folder is not None and not allow_images_outside_folder
    rows = []
    for source, sample_id, record in _file_records(path):
        try:
            if isinstance(record, BadSampleError):
                raise record
            if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                raise BadSampleError("no `conversations` list")
            messages = []
            for turn in record["conversations"]:
                if (
                    not isinstance(turn, dict)
                    or turn.get("from") not in LLAVA_ROLES
                    or not isinstance(turn.get("value"), str)
                ):
                    raise BadSampleError(f"a turn is not {{'from': 'human' | 'gpt', 'value': str}}: {turn!r}")
                messages.append({"role": LLAVA_ROLES[turn["from"]], "content": turn["value"]})
            image = record.get("image")
            paths = [] if image is None else image if isinstance(image, list) else [image]
            images = [_image_ref(p, folder, confine) for p in paths]
            if images and not any(IMAGE_PLACEHOLDER in m["content"] for m in messages):
                raise BadSampleError(
                    f"0 {IMAGE_PLACEHOLDER} placeholder(s) for {len(images)} image(s) (fewer placeholders than images)",
                    "placeholder mismatch",
                )
            rows.append(_row(sample_id, source, normalize_messages(messages, len(images)), images))
        except BadSampleError as error:
            rows.append(_row(sample_id, source, error=(error.kind, str(error))))
    return rows


def cc_sbu_align_rows(
    folder: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    allow_images_outside_folder: bool = False,
) -> list[dict]:
    """MiniGPT-4's stage-2 data: `filter_cap.json` (`{"annotations": [{"image_id", "caption"}]}`) and
    `image/{image_id}.jpg`. The user turn is the image and one of MiniGPT-4's four alignment instructions, picked
    from the image id (so a sample always gets the same one); the caption is the answer.

    `folder` is the dataset folder (or its `filter_cap.json`); images are read from `image_folder`, else `image/`
    beside the JSON file (with an `image_folder`, an image id that leads outside it is a bad sample unless
    `allow_images_outside_folder`).
    """
    folder = Path(folder)
    json_path = folder if folder.is_file() else folder / "filter_cap.json"
    images_dir = Path(image_folder) if image_folder is not None else json_path.parent / "image"
    confine = image_folder is not None and not allow_images_outside_folder
    rows = []
    for source, sample_id, record in _file_records(json_path, "image_id", key="annotations"):
        if isinstance(record, BadSampleError):
            rows.append(_row(sample_id, source, error=(record.kind, str(record))))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("caption"), str) or "image_id" not in record:
            rows.append(_row(sample_id, source, error=("invalid record", "expected {'image_id', 'caption'}")))
            continue
        if not record["caption"].strip():
            rows.append(_row(sample_id, source, error=("no assistant turn", "the caption is empty")))
            continue
        prompt = MINIGPT4_ALIGNMENT_PROMPTS[zlib.crc32(str(sample_id).encode()) % len(MINIGPT4_ALIGNMENT_PROMPTS)]
        messages = [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": [{"type": "text", "text": record["caption"]}]},
        ]
        try:
            image = _image_ref(f"{sample_id}.jpg", images_dir, confine)
        except BadSampleError as error:
            rows.append(_row(sample_id, source, error=(error.kind, str(error))))
            continue
        rows.append(_row(sample_id, source, messages, [image]))
    return rows


def messages_rows_from_file(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    allow_images_outside_folder: bool = False,
) -> list[dict]:
    """A JSON or JSONL file of `{"messages": [...], "images": [paths]}` records (`id` optional); image paths are
    relative to `image_folder` (and must lie inside it unless `allow_images_outside_folder`), else to the file's
    folder."""
    folder = Path(image_folder) if image_folder is not None else Path(path).resolve().parent
    confine = image_folder is not None and not allow_images_outside_folder
    rows = []
    for source, sample_id, record in _file_records(path):
        try:
            if isinstance(record, BadSampleError):
                raise record
            if not isinstance(record, dict):
                raise BadSampleError("a record is not a JSON object")
            images = record.get("images", [record["image"]] if record.get("image") is not None else [])
            images = [_image_ref(image, folder, confine) for image in images or []]
            rows.append(_row(sample_id, source, normalize_messages(record.get("messages"), len(images)), images))
        except BadSampleError as error:
            rows.append(_row(sample_id, source, error=(error.kind, str(error))))
    return rows


def _normalize_messages_batch(
    batch: dict, indices: list[int], name: str, image_folder: Path | None, confine: bool = False
) -> dict:
    """`datasets.map` function giving the sample columns of a `messages` + `images` (or `image`) dataset."""
    size = len(indices)
    ids = batch.get("id", indices)
    image_column = batch.get("images") or [[image] if image is not None else [] for image in batch.get("image", [])]
    rows = []
    for i in range(size):
        source = f"{name} row {indices[i]}"
        try:
            refs = (image_column[i] if image_column else []) or []
            images = [_image_ref(image, image_folder, confine) for image in refs]
            rows.append(_row(ids[i], source, normalize_messages(batch["messages"][i], len(images)), images))
        except BadSampleError as error:
            rows.append(_row(ids[i], source, error=(error.kind, str(error))))
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def messages_dataset(
    dataset,
    name: str,
    image_folder: str | os.PathLike | None = None,
    num_proc: int | None = None,
    allow_images_outside_folder: bool = False,
):
    """A `datasets.Dataset` with `messages` and `images` (or `image`) columns as sample rows; images are not
    decoded (an `Image` column is read as bytes, path columns as paths relative to `image_folder`, inside it unless
    `allow_images_outside_folder`)."""
    from datasets import Image, List

    if "messages" not in dataset.column_names:
        raise ValueError(f"{name} has no `messages` column (columns: {dataset.column_names}).")
    for column in ("images", "image"):
        feature = dataset.features.get(column)
        if isinstance(feature, Image):
            dataset = dataset.cast_column(column, Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), Image):
            dataset = dataset.cast_column(column, List(Image(decode=False)))
    columns = [c for c in ("id", "messages", "images", "image") if c in dataset.column_names]
    return dataset.select_columns(columns).map(
        _normalize_messages_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "name": name,
            "image_folder": Path(image_folder) if image_folder else None,
            "confine": bool(image_folder) and not allow_images_outside_folder,
        },
        remove_columns=columns,
        features=_sample_features(),
        num_proc=num_proc,
        desc="Reading samples",
    )


def infer_format(dataset_name: str) -> str:
    """The format of `dataset_name`: a LLaVA JSON, a cc_sbu_align folder, or a messages dataset (file, saved
    folder or Hub id). A file's format is the most common among its first `FORMAT_INFERENCE_RECORDS` readable records:
    a bad record does not decide it (it is skipped and named when the samples are read)."""
    path = Path(dataset_name)
    if path.is_dir():
        return "cc_sbu_align" if (path / "filter_cap.json").is_file() else "messages"
    if path.is_file():
        if path.name == "filter_cap.json":
            return "cc_sbu_align"
        votes, readable, problem = Counter(), 0, ""
        try:
            for _, record in iter_json_records(path):
                if isinstance(record, BadSampleError):
                    continue  # an unreadable line, skipped and named when the samples are read
                if isinstance(record, dict) and "conversations" in record:
                    votes["llava"] += 1
                elif isinstance(record, dict) and "messages" in record:
                    votes["messages"] += 1
                readable += 1
                if readable == FORMAT_INFERENCE_RECORDS:
                    break
        except ValueError as error:  # the file is not JSON past some point: the records read so far decide
            problem = f" ({error})"
        if votes:
            return votes.most_common(1)[0][0]
        raise ValueError(
            f"Cannot tell the format of {dataset_name}: none of its first {readable} readable record(s) has "
            f"`conversations` (llava) or `messages`{problem}; pass --dataset_format ({', '.join(DATASET_FORMATS)})."
        )
    return "messages"


def read_dataset(
    dataset_name: str,
    dataset_format: str | None = None,
    image_folder: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    num_proc: int | None = None,
    allow_images_outside_folder: bool = False,
):
    """Reads `dataset_name` into sample rows (a `datasets.Dataset`, images not decoded, with an `error` column);
    with an `image_folder`, image paths that lie outside it are bad samples unless `allow_images_outside_folder`."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    dataset_format = dataset_format or infer_format(dataset_name)
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"Unknown dataset format {dataset_format!r}; choose one of {', '.join(DATASET_FORMATS)}.")
    outside = allow_images_outside_folder
    if dataset_format == "llava":
        return Dataset.from_list(llava_rows(dataset_name, image_folder, outside), features=_sample_features())
    if dataset_format == "cc_sbu_align":
        return Dataset.from_list(cc_sbu_align_rows(dataset_name, image_folder, outside), features=_sample_features())
    path = Path(dataset_name)
    if path.is_file():
        return Dataset.from_list(messages_rows_from_file(path, image_folder, outside), features=_sample_features())
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = load_from_disk(str(path))
    else:
        dataset = load_dataset(dataset_name, name=dataset_config, split=split)
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise ValueError(f"{dataset_name} has no split {split!r} (splits: {list(dataset)}).")
        dataset = dataset[split]
    return messages_dataset(dataset, f"{dataset_name}[{split}]", image_folder, num_proc, outside)


# Checks before training: cheap, no image is decoded (headers only) and texts are tokenized without images.


def check_image_size(width: int, height: int, name: str) -> None:
    """Raises `BadSampleError` ("image size") for an empty image, one whose square padding (LLaVA's pad-to-square:
    the longest side squared) exceeds `MAX_PADDED_PIXELS`, or whose longest side exceeds `MAX_ASPECT_RATIO` times
    its shortest."""
    if width < 1 or height < 1:
        raise BadSampleError(f"image {name} is empty ({width}x{height})", "image size")
    problems = []
    side = max(width, height)
    if side * side > MAX_PADDED_PIXELS:
        problems.append(
            f"padded to a square it is {side}x{side} = {side * side:,} pixels (the limit is {MAX_PADDED_PIXELS:,}, "
            f"MAX_PADDED_PIXELS)"
        )
    if side > MAX_ASPECT_RATIO * min(width, height):
        problems.append(
            f"its aspect ratio {side / min(width, height):.0f}:1 exceeds {MAX_ASPECT_RATIO}:1 (MAX_ASPECT_RATIO)"
        )
    if problems:
        raise BadSampleError(f"image {name} is {width}x{height}: {'; '.join(problems)}", "image size")


def _open(ref: dict[str, Any]) -> PILImage.Image:
    """The image of a reference, opened lazily: its header is read, no pixel decoded."""
    return PILImage.open(io.BytesIO(ref["bytes"]) if ref.get("bytes") is not None else ref["path"])


def probe_image(ref: dict[str, Any]) -> None:
    """Raises `BadSampleError` (with its kind) for an image that cannot be used: missing, not an image, a
    decompression bomb, or a size that padding makes too large ([`check_image_size`]); reads the header only.

    A file whose data is truncated passes here and is caught when it is decoded for training ([`decode_images`]).
    """
    name = ref.get("path") or "embedded image"
    if ref.get("bytes") is None and (not ref.get("path") or not os.path.isfile(ref["path"])):
        raise BadSampleError(f"image file {name} is missing", "missing image")
    try:
        with _open(ref) as image:
            width, height = image.size
    except (OSError, PILImage.DecompressionBombError, ValueError) as error:
        raise BadSampleError(f"image {name} cannot be read: {error}", "unreadable image") from error
    check_image_size(width, height, name)


def _check_batch(
    batch: dict, processor, chat_template: str | None, max_length: int | None, require_image: bool
) -> dict:
    errors, kinds = list(batch["error"]), list(batch["error_kind"])
    lengths = [0] * len(errors)
    to_measure = []
    for i, images in enumerate(batch["images"]):
        if errors[i] is not None:
            continue
        try:
            for ref in images:
                probe_image(ref)
        except BadSampleError as error:
            kinds[i], errors[i] = error.kind, str(error)
            continue
        if require_image and not images:
            kinds[i], errors[i] = "no image", "a text-only sample has nothing to train in the align stage"
        else:
            to_measure.append(i)
    if to_measure:
        texts = processor.apply_chat_template(
            [batch["messages"][i] for i in to_measure], chat_template=chat_template, tokenize=False
        )
        token_ids = processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
        image_token_id = processor.image_token_id
        for i, ids in zip(to_measure, token_ids, strict=True):
            num_images = len(batch["images"][i])
            rendered = sum(1 for token in ids if token == image_token_id)
            lengths[i] = len(ids) + rendered * (processor.num_image_tokens - 1)
            if rendered != num_images:
                kinds[i] = "placeholder mismatch"
                errors[i] = f"the chat template writes {rendered} image placeholder(s) for {num_images} image(s)"
            elif max_length is not None and lengths[i] > max_length:
                kinds[i] = "too long"
                errors[i] = (
                    f"{lengths[i]} tokens ({rendered * processor.num_image_tokens} of them image tokens) exceed "
                    f"max_length={max_length}; samples are skipped rather than truncated into"
                )
    return {
        "error": errors,
        "error_kind": kinds,
        "length": lengths,
        "num_images": [len(images) for images in batch["images"]],
    }


def check_samples(
    dataset,
    processor,
    chat_template: str | None = None,
    max_length: int | None = None,
    require_image: bool = False,
    num_proc: int | None = None,
):
    """Fills the `error` column of sample rows: image files missing or unreadable (header), text-only samples where
    an image is required, and samples longer than `max_length` once rendered with `chat_template` and their image
    placeholders expanded. Adds `length` (tokens, image tokens included: what transformers' `group_by_length` and
    minillava's packing and modality grouping read) and `num_images`."""
    return dataset.map(
        _check_batch,
        batched=True,
        fn_kwargs={
            "processor": processor,
            "chat_template": chat_template,
            "max_length": max_length,
            "require_image": require_image,
        },
        num_proc=num_proc,
        desc="Checking samples",
    )


def split_bad_samples(dataset, strict: bool = False):
    """`(usable rows, SkipReport)`; with `strict`, raises `BadSampleError` naming the first bad sample instead."""
    bad = dataset.filter(lambda error: error is not None, input_columns="error")
    report = SkipReport(total=len(dataset))
    if len(bad):
        rows = bad.select_columns(["id", "source", "error_kind", "error"]).to_list()
        report.skipped = [SkippedSample(r["id"], r["source"], r["error_kind"], r["error"]) for r in rows]
        if strict:
            others = f" ({len(rows) - 1} other bad sample(s) found)" if len(rows) > 1 else ""
            raise BadSampleError(f"{report.skipped[0]}{others}")
        dataset = dataset.filter(lambda error: error is None, input_columns="error")
    return dataset.remove_columns(["error", "error_kind"]), report


# Decoding for training, once per use of a sample.


def load_image(ref: dict[str, Any]) -> PILImage.Image:
    """Decodes an image reference to an upright RGB PIL image (EXIF orientation, alpha on white); its size is
    checked from the header first ([`check_image_size`], raising `BadSampleError`), before any pixel is decoded."""
    from minillava.processing import to_rgb_image

    image = _open(ref)
    check_image_size(*image.size, ref.get("path") or "embedded image")
    image.load()
    return to_rgb_image(image)


def decode_images(batch: dict) -> dict:
    """`Dataset.with_transform` function: decodes each row's images to PIL; a row whose image fails to decode gets
    no images and an `image_error` for the collator to report."""
    if "images" not in batch:  # a column read (`dataset["length"]`)
        return batch
    images, errors = [], []
    for refs in batch["images"]:
        try:
            images.append([load_image(ref) for ref in refs])
            errors.append(None)
        except Exception as error:  # any decoding failure: the sample is reported and skipped, not the run
            name = next((ref.get("path") for ref in refs if ref.get("path")), "an embedded image")
            images.append([])
            errors.append(f"image {name} cannot be decoded: {error}")
    return {**batch, "images": images, "image_error": errors}


def load_sft_dataset(
    dataset_name: str | os.PathLike | Any,
    processor,
    dataset_format: str | None = None,
    image_folder: str | None = None,
    dataset_config: str | None = None,
    split: str = "train",
    chat_template: str | None = None,
    max_length: int | None = None,
    require_image: bool = False,
    strict: bool = False,
    num_proc: int | None = None,
    allow_images_outside_folder: bool = False,
):
    """The usable samples of a dataset, images decoded on access, and the [`SkipReport`] of the others.

    `dataset_name` is a path or Hub id (see [`read_dataset`]) or a `datasets.Dataset` with `messages` and `images`.
    Validation is cheap and runs once, up front: record structure, image headers (no pixel is decoded) and token
    lengths (texts only). Images are decoded when a batch is built; one that fails then is reported by
    [`DataCollatorWithSampleChecks`]. Sample ids used more than once are warned about ([`warn_duplicate_ids`]).
    """
    if isinstance(dataset_name, (str, os.PathLike)):
        rows = read_dataset(
            str(dataset_name),
            dataset_format,
            image_folder,
            dataset_config,
            split,
            num_proc,
            allow_images_outside_folder,
        )
    else:
        rows = messages_dataset(dataset_name, "train_dataset", image_folder, num_proc, allow_images_outside_folder)
    rows = check_samples(rows, processor, chat_template, max_length, require_image, num_proc)
    dataset, report = split_bad_samples(rows, strict=strict)
    if not len(dataset):
        raise BadSampleError(f"No usable sample in {dataset_name}.\n{report.summary()}")
    warn_duplicate_ids(dataset)
    return dataset.with_transform(decode_images), report


def warn_duplicate_ids(dataset) -> dict[str, list[str]]:
    """Logs a warning for the sample ids that more than one usable row has (each is trained, as many times), with
    their sources; returns id -> sources of those ids."""
    sources = defaultdict(list)
    columns = dataset.select_columns(["id", "source"]).to_dict()
    for sample_id, source in zip(columns["id"], columns["source"], strict=True):
        sources[sample_id].append(source)
    duplicates = {sample_id: where for sample_id, where in sources.items() if len(where) > 1}
    if duplicates:
        lines = [f"{len(duplicates)} sample id(s) are used more than once (every such sample is trained):"]
        lines += [
            f"  - {sample_id!r} at {', '.join(where)}"
            for sample_id, where in list(duplicates.items())[:MAX_LOGGED_SAMPLES]
        ]
        if len(duplicates) > MAX_LOGGED_SAMPLES:
            lines.append(f"  ... and {len(duplicates) - MAX_LOGGED_SAMPLES} more")
        logger.warning("\n".join(lines))
    return duplicates


@dataclass
class DataCollatorWithSampleChecks:
    """Wraps TRL's `DataCollatorForVisionLanguageModeling`: leaves out the samples whose images failed to decode
    (logged by id and source, added to `report`, or raised with `strict`) and passes the others on.

    A batch whose every sample failed gets a replacement drawn at random (seeded) from `dataset`, until one decodes
    (at most `MAX_REPLACEMENT_DRAWS`), so the optimizer always steps on real samples.

    Args:
        collator: the collator of the good samples.
        strict: raise `BadSampleError` on the first sample that fails to decode.
        report: the run's [`SkipReport`]; the samples skipped here are added to it.
        report_path: the file the report is kept in (`output_dir/skipped_samples.json`), rewritten (atomically,
            under a lock) at each skip. Data loader workers are processes with their own copy of `report`: their
            skips reach the file, and [`skip_report`] reads them back in the main process.
        dataset: the rows (images decoded on access) replacements are drawn from.
        seed: the seed of the draws (each data loader worker draws its own sequence).

    The Trainer uses its one collator for evaluation too: an evaluation batch whose every sample fails is filled
    from `dataset` as well, and its skips are reported with the training ones (their sources name their split).
    """

    collator: Callable[[list[dict]], dict]
    strict: bool = False
    report: SkipReport = field(default_factory=lambda: SkipReport(total=0))
    report_path: str | os.PathLike | None = None
    dataset: Any = field(default=None, repr=False)
    seed: int = 0
    _rng: tuple[int | None, random.Random] | None = field(default=None, init=False, repr=False)

    def __call__(self, examples: list[dict]) -> dict:
        failed: list[SkippedSample] = []
        good = self._decoded(examples, failed)
        while not good:
            names = ", ".join(f"{sample.id!r} ({sample.source})" for sample in failed[-len(examples) :])
            if self.dataset is None or not len(self.dataset):
                raise BadSampleError(
                    f"Every sample of a batch failed to decode ({names}) and the collator has no dataset to draw "
                    "replacements from."
                )
            if len(failed) - len(examples) == MAX_REPLACEMENT_DRAWS:
                raise BadSampleError(
                    f"Every sample of a batch failed to decode, and so did the {MAX_REPLACEMENT_DRAWS} samples drawn "
                    f"to replace them: the images of this dataset do not decode (the last ones: {names})."
                )
            good = self._decoded([self.dataset[self._draw()]], failed)
        if len(failed) >= len(examples):
            logger.warning("Every sample of a batch failed to decode: it is replaced by samples drawn at random.")
        return self.collator(good)

    def _decoded(self, examples: list[dict], failed: list[SkippedSample]) -> list[dict]:
        """The examples whose images decoded; the others are recorded, in the report and in `failed` (or raised,
        with `strict`)."""
        good = []
        for example in examples:
            if example.get("image_error"):
                sample = SkippedSample(example["id"], example["source"], "unreadable image", example["image_error"])
                if self.strict:
                    raise BadSampleError(str(sample))
                logger.warning("Skipping %s", sample)
                self.report.add(sample, self.report_path)
                failed.append(sample)
            else:
                good.append({key: example[key] for key in ("messages", "images", "image_hashes") if key in example})
        return good

    def _draw(self) -> int:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = None if info is None else info.id
        if self._rng is None or self._rng[0] != worker:
            self._rng = (worker, random.Random(f"{self.seed}-{worker}"))
        return self._rng[1].randrange(len(self.dataset))

    def skip_report(self) -> SkipReport:
        """The run's report: `report` with the skips data loader workers wrote to `report_path`."""
        if self.report_path is not None and Path(self.report_path).is_file():
            self.report.merge(SkipReport.load(self.report_path))
        return self.report


__all__ = [
    "DATASET_FORMATS",
    "MAX_ASPECT_RATIO",
    "MAX_PADDED_PIXELS",
    "MINIGPT4_ALIGNMENT_PROMPTS",
    "BadSampleError",
    "DataCollatorWithSampleChecks",
    "SkipReport",
    "SkippedSample",
    "cc_sbu_align_rows",
    "check_image_size",
    "check_samples",
    "decode_images",
    "infer_format",
    "invalid_unicode",
    "iter_json_records",
    "llava_rows",
    "load_image",
    "load_sft_dataset",
    "messages_dataset",
    "messages_rows_from_file",
    "normalize_messages",
    "probe_image",
    "read_dataset",
    "split_bad_samples",
    "split_placeholders",
    "warn_duplicate_ids",
]
