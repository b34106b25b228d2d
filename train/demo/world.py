"""A synthetic visual question-answering world for the offline demo, drawn with PIL.

Each scene holds one to three objects of a single shape and colour on a plain background, laid out on a 3x3 grid.
Everything is deterministic from `(split, seed, index)`:

- [`caption_samples`] gives LCS-558K-like caption pairs for stage 1 (alignment);
- [`vqa_samples`] gives single-word questions with LLaVA-1.5's response-format prompt for stage 2;
- [`evaluation_samples`] gives held-out questions of the same kind, each with its `type` (colour, shape, ...);
- [`write_llava_json`] writes any of these as LLaVA conversation JSON plus an image folder.

Splits: `"train"` never shows the shape and colour combinations of [`HELD_OUT_PAIRS`]; `"test"` uses other seeds and
draws half of its scenes from them; `"pretrain"` (other seeds again, every combination) is what
[`minillava.train.demo.components`] pretrains its vision towers and language model on, as web-scale data would. The
vocabulary is closed: [`vocabulary`] lists every word and [`world_sentences`] every sentence the world can produce.

```python
>>> from minillava.train.demo.world import ANSWERS, vqa_samples
>>> sample = vqa_samples(1, seed=0)[0]
>>> sample["messages"][1]["content"][0]["text"] in ANSWERS
True

```
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw


__all__ = [
    "ANSWERS",
    "CAPTION_PROMPTS",
    "COLOURS",
    "COUNTS",
    "HELD_OUT_PAIRS",
    "POSITIONS",
    "RESPONSE_FORMAT_PROMPT",
    "SHAPES",
    "SPLITS",
    "TRAIN_PAIRS",
    "Scene",
    "answer_kind",
    "caption_samples",
    "evaluation_samples",
    "make_scenes",
    "normalize_answer",
    "to_llava_conversations",
    "vocabulary",
    "vqa_samples",
    "world_sentences",
    "write_llava_json",
]

RESPONSE_FORMAT_PROMPT = "Answer the question using a single word or phrase."

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
_PLURALS = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 215),
    "yellow": (235, 205, 30),
    "purple": (140, 60, 190),
    "orange": (245, 135, 25),
}
COUNTS: tuple[str, ...] = ("one", "two", "three")
# Single objects sit in one of five named cells of the 3x3 grid (row, column); corners have no unambiguous name.
_POSITION_CELLS = {"left": (1, 0), "right": (1, 2), "top": (0, 1), "bottom": (2, 1), "center": (1, 1)}
POSITIONS: tuple[str, ...] = tuple(_POSITION_CELLS)
_WHERE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

ANSWERS: tuple[str, ...] = (*COLOURS, *SHAPES, *COUNTS, *POSITIONS)
_ANSWER_KIND = {
    **dict.fromkeys(COLOURS, "colour"),
    **dict.fromkeys(SHAPES, "shape"),
    **dict.fromkeys(COUNTS, "count"),
    **dict.fromkeys(POSITIONS, "position"),
}

# One colour held out per shape (each colour still appears with at least four shapes in training).
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "blue"),
    ("square", "yellow"),
    ("triangle", "green"),
    ("diamond", "red"),
    ("cross", "purple"),
)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    pair for pair in itertools.product(SHAPES, COLOURS) if pair not in HELD_OUT_PAIRS
)
SPLITS: tuple[str, ...] = ("train", "test", "pretrain")
_NOVEL_FRACTION = 0.5  # share of "test" scenes drawn from HELD_OUT_PAIRS

# Stage-1 instructions in the spirit of LLaVA's brief-description prompts (the `plain` template drops them).
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the image.",
    "Summarize the visual content of the image.",
)
_CAPTION_TEMPLATES = ("{scene}", "there {verb} {scene}", "an image of {scene}", "a picture of {scene}")
_QUESTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # kind -> (singular forms, plural forms)
    "colour": (
        ("What colour is the shape?", "What is the colour of the shape?"),
        ("What colour are the shapes?", "What is the colour of the shapes?"),
    ),
    "shape": (
        ("What shape is shown?", "Which shape is in the image?"),
        ("What shape are the objects?", "Which shape is in the image?"),
    ),
    "count": (
        ("How many shapes are there?", "How many objects are in the image?"),
        ("How many shapes are there?", "How many objects are in the image?"),
    ),
    "position": (("Where is the shape?", "Where is the shape located?"), ()),
}
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """One scene: `count` objects of one shape and colour, each `(cx, cy, size)` in fractions of the image side."""

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    background: tuple[int, int, int]
    cells: tuple[tuple[int, int], ...]
    objects: tuple[tuple[float, float, float], ...]
    caption_template: int
    caption_prompt: int
    question_forms: tuple[int, ...]

    @property
    def count(self) -> int:
        """How many objects the scene holds (1 to 3)."""
        return len(self.objects)

    @property
    def position(self) -> str | None:
        """The named position of a single object, `None` when there are several."""
        if self.count != 1:
            return None
        return next(name for name, cell in _POSITION_CELLS.items() if cell == self.cells[0])

    @property
    def novel(self) -> bool:
        """Whether the shape and colour combination is one the `"train"` split never shows."""
        return (self.shape, self.colour) in HELD_OUT_PAIRS

    def render(self, image_size: int = 48) -> Image.Image:
        """Draw the scene as an RGB image (supersampled, then box-filtered, so edges are anti-aliased)."""
        canvas = Image.new("RGB", (image_size * _SUPERSAMPLE,) * 2, self.background)
        self._draw(ImageDraw.Draw(canvas), image_size * _SUPERSAMPLE, self.rgb)
        return canvas.resize((image_size, image_size), Image.Resampling.BOX)

    def coverage(self, grid: int, image_size: int = 48) -> list[list[float]]:
        """Fraction of each cell of a `grid` x `grid` partition covered by an object (rows first), e.g. per patch."""
        mask = Image.new("L", (image_size * _SUPERSAMPLE,) * 2, 0)
        self._draw(ImageDraw.Draw(mask), image_size * _SUPERSAMPLE, 255)
        small = mask.resize((grid, grid), Image.Resampling.BOX)
        return [[small.getpixel((col, row)) / 255 for col in range(grid)] for row in range(grid)]

    def caption(self) -> str:
        """A short LCS-558K-like caption, e.g. "there is a red circle on the left"."""
        if self.count == 1:
            article = "an" if self.colour[0] in "aeiou" else "a"
            scene = f"{article} {self.colour} {self.shape} {_WHERE[self.position]}"
        else:
            scene = f"{COUNTS[self.count - 1]} {self.colour} {_PLURALS[self.shape]}"
        verb = "is" if self.count == 1 else "are"
        return _CAPTION_TEMPLATES[self.caption_template].format(scene=scene, verb=verb)

    def caption_instruction(self) -> str:
        """The stage-1 instruction this scene's caption answers, one of [`CAPTION_PROMPTS`]."""
        return CAPTION_PROMPTS[self.caption_prompt]

    def questions(self) -> list[tuple[str, str]]:
        """`(question, answer)` pairs; the question already ends with [`RESPONSE_FORMAT_PROMPT`]."""
        answers = {"colour": self.colour, "shape": self.shape, "count": COUNTS[self.count - 1]}
        if self.position is not None:
            answers["position"] = self.position
        pairs = []
        for (kind, answer), form in zip(answers.items(), self.question_forms[: len(answers)], strict=True):
            singular, plural = _QUESTIONS[kind]
            question = (singular if self.count == 1 else plural)[form]
            pairs.append((f"{question}\n{RESPONSE_FORMAT_PROMPT}", answer))
        return pairs

    def _draw(self, draw: ImageDraw.ImageDraw, side: int, fill: Any) -> None:
        for cx, cy, size in self.objects:
            x, y, r = cx * side, cy * side, size * side / 2
            if self.shape == "circle":
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
            elif self.shape == "square":
                s = r * 0.85  # same visual weight as the circle
                draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
            elif self.shape == "triangle":
                draw.polygon([(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)], fill=fill)
            elif self.shape == "diamond":
                draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
            else:  # cross
                w = r * 0.35
                draw.rectangle((x - r, y - w, x + r, y + w), fill=fill)
                draw.rectangle((x - w, y - r, x + w, y + r), fill=fill)


def _jitter(rng: random.Random, rgb: Sequence[int], amount: int) -> tuple[int, int, int]:
    return tuple(min(255, max(0, c + rng.randint(-amount, amount))) for c in rgb)


def _sample_scene(rng: random.Random, split: str) -> Scene:
    if split == "pretrain":
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    elif split == "train" or rng.random() >= _NOVEL_FRACTION:
        shape, colour = rng.choice(TRAIN_PAIRS)
    else:
        shape, colour = rng.choice(HELD_OUT_PAIRS)
    count = rng.randint(1, 3)
    if count == 1:
        cells = (_POSITION_CELLS[rng.choice(POSITIONS)],)
    else:
        cells = tuple(sorted(rng.sample([(row, col) for row in range(3) for col in range(3)], count)))
    objects = []
    for row, col in cells:
        size = rng.uniform(0.24, 0.32)  # of the image side; a grid cell is 1/3
        slack = (1 / 3 - size) / 2
        cx = (col + 0.5) / 3 + rng.uniform(-slack, slack)
        cy = (row + 0.5) / 3 + rng.uniform(-slack, slack)
        objects.append((round(cx, 4), round(cy, 4), round(size, 4)))
    grey = rng.randint(225, 250)
    return Scene(
        shape=shape,
        colour=colour,
        rgb=_jitter(rng, COLOURS[colour], 12),
        background=_jitter(rng, (grey, grey, grey), 5),
        cells=cells,
        objects=tuple(objects),
        caption_template=rng.randrange(len(_CAPTION_TEMPLATES)),
        caption_prompt=rng.randrange(len(CAPTION_PROMPTS)),
        question_forms=tuple(rng.randrange(2) for _ in _QUESTIONS),
    )


def make_scenes(num_scenes: int, split: str = "train", seed: int = 0) -> list[Scene]:
    """The first `num_scenes` scenes of `split` for `seed`; scene `i` is the same whatever `num_scenes` is."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    return [_sample_scene(random.Random(f"minillava-demo-world/{split}/{seed}/{i}"), split) for i in range(num_scenes)]


def _user(text: str, image: bool) -> dict[str, Any]:
    content = [{"type": "image"}] if image else []
    return {"role": "user", "content": [*content, {"type": "text", "text": text}]}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def caption_samples(num_images: int, split: str = "train", seed: int = 0, image_size: int = 48) -> list[dict]:
    """Stage-1 samples `{"messages": [user: image + instruction, assistant: caption], "images": [image]}`."""
    return [
        {
            "messages": [_user(scene.caption_instruction(), image=True), _assistant(scene.caption())],
            "images": [scene.render(image_size)],
        }
        for scene in make_scenes(num_images, split, seed)
    ]


def vqa_samples(
    num_images: int, split: str = "train", seed: int = 0, image_size: int = 48, multi_turn: bool = False
) -> list[dict]:
    """Stage-2 samples in the `messages`/`images` format.

    Every image has three questions (colour, shape, count) and a fourth (position) when it holds one object. With
    `multi_turn=False` each question is its own sample (the samples of one image share its `PIL.Image`); with
    `multi_turn=True` an image gives one conversation, as in LLaVA-1.5's VQA data.
    """
    samples = []
    for scene in make_scenes(num_images, split, seed):
        image = scene.render(image_size)
        pairs = scene.questions()
        if multi_turn:
            messages = []
            for turn, (question, answer) in enumerate(pairs):
                messages += [_user(question, image=turn == 0), _assistant(answer)]
            samples.append({"messages": messages, "images": [image]})
        else:
            samples += [
                {"messages": [_user(question, image=True), _assistant(answer)], "images": [image]}
                for question, answer in pairs
            ]
    return samples


def evaluation_samples(num_images: int, split: str = "test", seed: int = 0, image_size: int = 48) -> list[dict]:
    """Held-out single-word questions as [`vqa_samples`], each with its `type` (the answer kind: colour, shape,
    count or position), which `minillava eval` breaks the accuracy down by."""
    samples = vqa_samples(num_images, split, seed, image_size)
    for sample in samples:
        sample["type"] = answer_kind(sample["messages"][1]["content"][0]["text"])
    return samples


def answer_kind(answer: str) -> str | None:
    """`"colour"`, `"shape"`, `"count"` or `"position"` for a word of [`ANSWERS`], else `None`."""
    return _ANSWER_KIND.get(answer)


_NUMBERS = {"1": "one", "2": "two", "3": "three", "centre": "center", "middle": "center"}


def normalize_answer(text: str) -> str:
    """The first word of a generated answer, lower-cased, without punctuation; digits become number words."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    if not words:
        return ""
    return _NUMBERS.get(words[0], words[0])


def to_llava_conversations(messages: Sequence[dict]) -> list[dict[str, str]]:
    """`messages` -> LLaVA's `conversations` (`from: human/gpt`), with `"<image>\\n"` before the first image's text."""
    conversations = []
    for message in messages:
        content = message["content"]
        text = "".join(part["text"] for part in content if part["type"] == "text")
        if any(part["type"] == "image" for part in content):
            text = "<image>\n" + text
        conversations.append({"from": "human" if message["role"] == "user" else "gpt", "value": text})
    return conversations


def write_llava_json(
    samples: Iterable[dict], output_dir: str | Path, name: str = "data", image_folder: str = "images"
) -> tuple[Path, Path]:
    """Write samples as LLaVA conversation JSON `output_dir/name.json` plus PNGs in `output_dir/image_folder`.

    Images are named by a hash of their pixels, so the samples of one image share one file. Each record's `image`
    is relative to the image folder (LLaVA's `--image_folder`); a sample's other keys (`type`, ...) are kept.
    Returns `(json_path, image_folder_path)`.
    """
    output_dir = Path(output_dir)
    image_dir = output_dir / image_folder
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for index, sample in enumerate(samples):
        record: dict[str, Any] = {"id": f"{name}-{index:06d}"}
        record.update({key: value for key, value in sample.items() if key not in ("messages", "images")})
        images = sample.get("images") or []
        if len(images) > 1:
            raise ValueError("LLaVA conversation JSON holds at most one image per record.")
        if images:
            image = images[0].convert("RGB")
            digest = hashlib.sha1(image.tobytes() + repr(image.size).encode()).hexdigest()[:16]
            filename = f"{digest}.png"
            if not (image_dir / filename).exists():
                image.save(image_dir / filename)
            record["image"] = filename
        record["conversations"] = to_llava_conversations(sample["messages"])
        records.append(record)
    json_path = output_dir / f"{name}.json"
    json_path.write_text(json.dumps(records, indent=1))
    return json_path, image_dir


def world_sentences() -> Iterator[str]:
    """Every distinct caption, instruction, question and answer the world can produce, in a fixed order."""
    seen: set[str] = set()
    texts: list[str] = [*CAPTION_PROMPTS, RESPONSE_FORMAT_PROMPT, *ANSWERS]
    for singular, plural in _QUESTIONS.values():
        texts += [f"{question}\n{RESPONSE_FORMAT_PROMPT}" for question in (*singular, *plural)]
    layouts = [(_POSITION_CELLS[position],) for position in POSITIONS] + [((0, 0),) * 2, ((0, 0),) * 3]
    for shape, colour, cells, template in itertools.product(SHAPES, COLOURS, layouts, range(len(_CAPTION_TEMPLATES))):
        objects = ((0.5, 0.5, 0.2),) * len(cells)
        texts.append(Scene(shape, colour, (0, 0, 0), (0, 0, 0), cells, objects, template, 0, (0,) * 4).caption())
    for text in texts:
        if text not in seen:
            seen.add(text)
            yield text


def vocabulary() -> list[str]:
    """The closed, sorted word list of the world (words and punctuation marks, case kept)."""
    return sorted({word for text in world_sentences() for word in re.findall(r"\w+|[^\w\s]", text)})
