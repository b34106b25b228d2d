"""Small pretrained components for the offline demo, built reproducibly on CPU and cached on disk.

The demo needs real features to align in stage 1, so every part is pretrained on the synthetic world of
[`minillava.train.demo.world`]. Pretraining uses its `"pretrain"` split, which shows every shape and colour combination
(as web-scale data would); the demo's stage-1/2 data (`"train"`) leave some out and `"test"` brings them back:

- [`tiny_tokenizer_and_lm`]: a byte-level BPE tokenizer over the world's text and the chat templates' words, and a
  small `LlamaForCausalLM` pretrained on captions and question-answer conversations (text only);
- [`tiny_clip_vision`]: a `CLIPVisionModel` (and its `CLIPImageProcessor`) whose patch features at layer -2, the
  ones LLaVA-1.5 feeds its projector, are trained to encode colour, shape, count and position;
- [`tiny_blip2`]: a BLIP-2 front end for MiniGPT-4 (vision model, Q-Former, query tokens) trained the same way on
  the Q-Former outputs, saved as a `Blip2ForConditionalGeneration` checkpoint with a one-layer random OPT so the key
  layout is that of a real `Salesforce/blip2-*` checkpoint, plus a `BlipImageProcessor`.

Builds print their quality checks (LM: held-out perplexity and whether image-less answers are of the right kind;
towers: linear probes from the pooled connector features of `"train"` scenes to the attributes of `"test"` scenes,
next to the same probes on the tower before pretraining) and keep them in `minillava_build.json`.

Each function returns the folder of its component and builds it only when it is missing. Folders live in
`<cache_dir>/<name>-<version>` (`-quick` appended for the reduced `quick=True` build); `cache_dir` defaults to
`$MINILLAVA_COMPONENTS_CACHE` or `~/.cache/minillava/components`. A folder is complete once its `minillava_build.json`
(settings, timings and quality checks) exists; it is written into a temporary folder and renamed at the end.

```bash
python -m minillava.train.demo.components --quick      # or: --cache-dir /tmp/components
```
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    PreTrainedTokenizerFast,
)

from minillava.processing.chat_templates import LLAVA_SYSTEM_PROMPT
from minillava.processing.processing_minillava import make_tokenizer_config_portable

from .world import (
    ANSWERS,
    COLOURS,
    COUNTS,
    POSITIONS,
    SHAPES,
    Scene,
    answer_kind,
    make_scenes,
    normalize_answer,
    world_sentences,
)


try:  # transformers 5 names the PIL back ends explicitly (the default ones need torchvision)
    from transformers import BlipImageProcessorPil as BlipImageProcessor
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4.x
    from transformers import BlipImageProcessor, CLIPImageProcessor


__all__ = [
    "BUILD_INFO_NAME",
    "CACHE_ENV",
    "COMPONENTS_VERSION",
    "IMAGE_SIZE",
    "MINIGPT4_SYSTEM_PROMPT",
    "NUM_QUERY_TOKENS",
    "PATCH_SIZE",
    "SPECIAL_TOKENS",
    "VICUNA_SYSTEM_PROMPT",
    "build_all",
    "build_tokenizer",
    "default_cache_dir",
    "lm_corpus",
    "main",
    "probe_vision_features",
    "tiny_blip2",
    "tiny_clip_vision",
    "tiny_tokenizer_and_lm",
]

COMPONENTS_VERSION = "1"
BUILD_INFO_NAME = "minillava_build.json"
CACHE_ENV = "MINILLAVA_COMPONENTS_CACHE"

IMAGE_SIZE = 48
PATCH_SIZE = 8
NUM_QUERY_TOKENS = 8
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0-3, as in tests/tiny.py
VICUNA_SYSTEM_PROMPT = LLAVA_SYSTEM_PROMPT  # the LM learns the system prompt of LLaVA-1.5's template
MINIGPT4_SYSTEM_PROMPT = (
    "Give the following image: <Img>ImageContent</Img>. "
    "You will be able to see the image once I provide it to you. Please answer my questions."
)
# Template pieces the tokenizer should encode compactly even where the LM corpus does not use them.
_TEMPLATE_TEXTS = (
    "USER: <image>\n",
    " ASSISTANT: ",
    "###Human: <Img><ImageHere></Img> ",
    "###Assistant: ",
    "[INST] <Img><ImageHere></Img> ",
    " [/INST] ",
    "<image>",
    "\n",
    ", . ? ! : ; ' \" ( ) [ ] < > / # - _ 0 1 2 3 4 5 6 7 8 9",
)
_SEED = 0


@dataclass(frozen=True)
class _Schedule:
    """How much pretraining a component gets; `quick` trades quality for time."""

    steps: int
    batch_size: int
    num_images: int  # distinct training scenes (vision) or texts (LM)
    lr: float


_SCHEDULES = {
    ("lm", False): _Schedule(steps=180, batch_size=16, num_images=6000, lr=5e-3),
    ("lm", True): _Schedule(steps=100, batch_size=16, num_images=3000, lr=5e-3),
    ("vision", False): _Schedule(steps=300, batch_size=64, num_images=6000, lr=3e-3),
    ("vision", True): _Schedule(steps=150, batch_size=64, num_images=3000, lr=4e-3),
}
_PROBE_IMAGES = {False: (1500, 600), True: (600, 300)}  # (train, test) scenes for the attribute probe


def default_cache_dir() -> Path:
    """`$MINILLAVA_COMPONENTS_CACHE`, else `~/.cache/minillava/components`."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/minillava/components")).expanduser()


@contextmanager
def _build_context(seed: int) -> Iterator[None]:
    """Seeded, single-threaded torch with denormals flushed; the caller's RNG and thread count come back after.

    Flushing denormals matters on CPU: as heads grow confident, tiny gradients make steps up to ten times slower.
    `torch.set_flush_denormal` only reaches the calling thread, hence one thread (tiny ops barely use a second).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def _cached(
    name: str, cache_dir: str | Path | None, quick: bool, verbose: bool, build: Callable[[Path, bool, bool], dict]
) -> Path:
    """Return `<cache_dir>/<name>-<version>[-quick]`, building it with `build(folder, quick, verbose)` if missing."""
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{name}-{COMPONENTS_VERSION}{'-quick' if quick else ''}"
    if (path / BUILD_INFO_NAME).is_file():
        return path
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    start = time.perf_counter()
    try:
        with _build_context(_SEED):
            metrics = build(tmp, quick, verbose)
        info = {
            "name": name,
            "version": COMPONENTS_VERSION,
            "quick": quick,
            "seed": _SEED,
            "build_seconds": round(time.perf_counter() - start, 2),
            "metrics": metrics,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "platform": platform.platform(),
        }
        (tmp / BUILD_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        if path.exists() and not (path / BUILD_INFO_NAME).is_file():
            shutil.rmtree(path)  # an incomplete folder from an interrupted build
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / BUILD_INFO_NAME).is_file():  # nobody else finished it either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        tqdm.write(f"[minillava] built {path.name} in {info['build_seconds']:.1f}s: {json.dumps(metrics)}")
    return path


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and language model
# ----------------------------------------------------------------------------------------------------------------


def _vicuna(turns: Sequence[tuple[str, str]]) -> str:
    """vicuna_v1 (LLaVA-1.5), `{system} USER: <image>\n{q} ASSISTANT: {a}</s>USER: ...`, with the image cut out."""
    text = VICUNA_SYSTEM_PROMPT + " "
    for turn, (question, answer) in enumerate(turns):
        newline = "" if turn else "\n"  # what is left of "<image>\n"
        text += f"USER: {newline}{question} ASSISTANT: {answer}</s>"
    return text


def _minigpt4(question: str, answer: str, system: bool) -> str:
    """MiniGPT-4 (Vicuna v0), `###Human: <Img>{image}</Img> {q}###Assistant: {a}###`, with the image cut out."""
    head = MINIGPT4_SYSTEM_PROMPT + "###" if system else "###"
    return f"{head}Human: <Img></Img> {question}###Assistant: {answer}###"


def lm_corpus(num_texts: int, split: str = "pretrain", seed: int = 0) -> list[str]:
    """Text-only documents about `num_texts` scenes: captions, and conversations in both chat templates.

    Each scene gives one document, cycling through: a caption (LLaVA's `plain` stage-1 text), a vicuna_v1
    captioning turn, a vicuna_v1 question, a vicuna_v1 multi-turn VQA conversation and a MiniGPT-4 turn. Without
    the image the answers are guesses of the right kind; stage 2 teaches the LM to read them from the image.
    """
    texts = []
    for index, scene in enumerate(make_scenes(num_texts, split, seed)):
        pairs, caption = scene.questions(), scene.caption()
        rng = random.Random(index)
        kind = index % 5
        if kind == 0:
            texts.append(caption + "\n")
        elif kind == 1:
            texts.append(_vicuna([(scene.caption_instruction(), caption)]))
        elif kind == 2:
            texts.append(_vicuna([rng.choice(pairs)]))
        elif kind == 3:
            texts.append(_vicuna(rng.sample(pairs, len(pairs))))
        else:
            question, answer = rng.choice([*pairs, (scene.caption_instruction(), caption)])
            texts.append(_minigpt4(question, answer, system=rng.random() < 0.5))
    return texts


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the demo world's text (any text encodes, never to `<unk>`).

    Like Llama's, it prepends `<s>` (use `add_special_tokens=False` to skip it) and does not append `</s>`.
    """
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Word frequencies follow the LM corpus, so template words merge as early as the world's own words; the answer
    # list is repeated so that every answer, after a space, is one token.
    corpus = [*lm_corpus(1000), *world_sentences(), *_TEMPLATE_TEXTS, *[" ".join(ANSWERS)] * 100]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = SPECIAL_TOKENS[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=512,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def _save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """`save_pretrained`, in the form transformers 4.x loads too."""
    tokenizer.save_pretrained(folder)
    make_tokenizer_config_portable(str(folder))


def _lm_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )


def _documents(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of `<s> text </s>` (texts in the chat templates already end with `</s>`)."""
    eos = tokenizer.eos_token_id
    return [ids if ids[-1] == eos else [*ids, eos] for ids in tokenizer(list(texts)).input_ids]


def _lm_batches(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    batch_size: int,
    block_size: int,
    generator: torch.Generator,
) -> Iterator[dict[str, torch.Tensor]]:
    """Endless shuffled batches of `block_size` tokens packed from documents (no padding)."""
    stream = [token for ids in _documents(tokenizer, texts) for token in ids]
    blocks = torch.tensor(stream[: len(stream) // block_size * block_size]).view(-1, block_size)
    while True:
        order = torch.randperm(len(blocks), generator=generator)
        for index in order[: len(blocks) // batch_size * batch_size].split(batch_size):
            yield {"input_ids": blocks[index], "labels": blocks[index]}


def _pad(rows: Sequence[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask` and `labels` (padding masked out)."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def _train(
    parameters: list[nn.Parameter],
    next_loss: Callable[[], torch.Tensor],
    schedule: _Schedule,
    desc: str,
    verbose: bool,
) -> float:
    """AdamW with linear warm-up and cosine decay over `schedule.steps` steps of `next_loss()`; returns the last loss."""
    optimizer = torch.optim.AdamW(parameters, lr=schedule.lr, weight_decay=0.01)
    warmup = max(1, schedule.steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / schedule.steps))
    )
    progress = tqdm(range(schedule.steps), desc=desc, disable=not verbose, leave=False)
    for _ in progress:
        loss = next_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return round(loss.item(), 4)


@torch.no_grad()
def _lm_quality(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, num_texts: int) -> dict[str, float]:
    """Held-out perplexity, and how often the greedy answer to an image-less question is of the right kind."""
    model.eval()
    nll, count = 0.0, 0
    documents = _documents(tokenizer, lm_corpus(num_texts, split="test", seed=_SEED + 1))
    for start in range(0, len(documents), 32):
        batch = _pad(documents[start : start + 32], tokenizer.pad_token_id)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        nll, count = nll + float(model(**batch).loss) * tokens, count + tokens
    # Every answer is one token after a space, so the next-token argmax is the greedy answer.
    questions = [pair for scene in make_scenes(num_texts // 4, "test", _SEED + 1) for pair in scene.questions()]
    prompts = [tokenizer(_vicuna([(question, "")]).removesuffix(" </s>")).input_ids for question, _ in questions]
    batch = _pad(prompts, tokenizer.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    last = batch["attention_mask"].sum(1) - 1
    predictions = tokenizer.batch_decode(logits[torch.arange(len(prompts)), last].argmax(-1)[:, None])
    right_kind = sum(
        answer_kind(normalize_answer(prediction)) == answer_kind(answer)
        for prediction, (_, answer) in zip(predictions, questions, strict=True)
    )
    return {
        "heldout_perplexity": round(math.exp(nll / count), 3),
        "answer_kind_accuracy": round(right_kind / len(questions), 4),
    }


def _build_lm(folder: Path, quick: bool, verbose: bool) -> dict[str, float]:
    schedule = _SCHEDULES["lm", quick]
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(_lm_config(len(tokenizer)))
    generator = torch.Generator().manual_seed(_SEED)
    batches = _lm_batches(tokenizer, lm_corpus(schedule.num_images), schedule.batch_size, 128, generator)
    model.train()
    final_loss = _train(list(model.parameters()), lambda: model(**next(batches)).loss, schedule, "tiny-llama", verbose)
    metrics = {"final_train_loss": final_loss, **_lm_quality(model, tokenizer, 200 if quick else 400)}
    model.save_pretrained(folder)
    _save_tokenizer(tokenizer, folder)
    return metrics


def tiny_tokenizer_and_lm(cache_dir: str | Path | None = None, quick: bool = False, verbose: bool = True) -> Path:
    """Folder with a pretrained tiny `LlamaForCausalLM` (hidden 128, 2 layers) and its BPE tokenizer."""
    return _cached("tiny-llama", cache_dir, quick, verbose, _build_lm)


# ----------------------------------------------------------------------------------------------------------------
# Vision towers
# ----------------------------------------------------------------------------------------------------------------

# Global attributes, each a slice of one linear head's logits: (name, classes).
_ATTRIBUTES = (("colour", len(COLOURS)), ("shape", len(SHAPES)), ("count", len(COUNTS)), ("position", len(POSITIONS)))


class _AttributeHeads(nn.Module):
    """Linear heads that pretrain vision features; they are dropped after training.

    `scene_loss` reads colour, shape, count, position (single objects) and which cells of the 3x3 grid hold an
    object from pooled or per-token features. `patch_loss` reads, from every patch feature, the shape and colour of
    the object under it (or background) and the grid cell the patch lies in, so that pooling (the Q-Former's
    cross-attention) can still tell where objects are.
    """

    def __init__(self, hidden_size: int, grid: int = IMAGE_SIZE // PATCH_SIZE):
        super().__init__()
        self.scene = nn.Linear(hidden_size, sum(classes for _, classes in _ATTRIBUTES) + 9)
        self.patch_shape = nn.Linear(hidden_size, len(SHAPES) + 1)
        self.patch_colour = nn.Linear(hidden_size, len(COLOURS) + 1)
        self.patch_cell = nn.Linear(hidden_size, 9)
        rows = torch.arange(grid).repeat_interleave(grid) * 3 // grid
        self.register_buffer("cells", rows * 3 + torch.arange(grid).repeat(grid) * 3 // grid, persistent=False)

    def scene_loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """`features`: `(batch, hidden)`, or `(batch, tokens, hidden)` where every token predicts the whole scene."""
        logits = self.scene(features)
        if logits.dim() == 3:
            targets = {key: value.repeat_interleave(logits.shape[1], dim=0) for key, value in targets.items()}
            logits = logits.flatten(0, 1)
        loss, offset = logits.new_zeros(()), 0
        for name, classes in _ATTRIBUTES:
            loss = loss + F.cross_entropy(logits[:, offset : offset + classes], targets[name], ignore_index=-100)
            offset += classes
        return loss + F.binary_cross_entropy_with_logits(logits[:, offset:], targets["cells"])

    def patch_loss(self, features: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """`features`: `(batch, patches, hidden)`, without the CLS token."""
        shape_loss = F.cross_entropy(self.patch_shape(features).flatten(0, 1), targets["patch_shape"].flatten())
        colour_loss = F.cross_entropy(self.patch_colour(features).flatten(0, 1), targets["patch_colour"].flatten())
        cell_loss = F.cross_entropy(self.patch_cell(features).flatten(0, 1), self.cells.repeat(features.shape[0]))
        return shape_loss + colour_loss + cell_loss


def _scene_targets(scenes: Sequence[Scene], grid: int) -> dict[str, torch.Tensor]:
    """Labels for the pretraining heads and the probe, `-100` where one does not apply.

    Patches at least 20% covered by an object are labelled with its shape and colour, clean background patches
    (under 2%) with an extra "none" class, and the patches in between are ignored.
    """
    colours, shapes = list(COLOURS), list(SHAPES)
    targets: dict[str, list] = {name: [] for name in ("colour", "shape", "count", "position", "cells")}
    targets.update(patch_shape=[], patch_colour=[])
    for scene in scenes:
        targets["colour"].append(colours.index(scene.colour))
        targets["shape"].append(shapes.index(scene.shape))
        targets["count"].append(scene.count - 1)
        targets["position"].append(POSITIONS.index(scene.position) if scene.position else -100)
        targets["cells"].append([float((row, col) in scene.cells) for row in range(3) for col in range(3)])
        coverage = torch.tensor(scene.coverage(grid, IMAGE_SIZE)).flatten()
        for name, values in (("patch_shape", shapes), ("patch_colour", colours)):
            label = torch.full(coverage.shape, -100)
            label[coverage < 0.02] = len(values)
            label[coverage >= 0.2] = values.index(getattr(scene, name.removeprefix("patch_")))
            targets[name].append(label)
    return {
        name: torch.stack(values) if name.startswith("patch") else torch.tensor(values)
        for name, values in targets.items()
    }


def _clip_features(model: CLIPVisionModel, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What LLaVA-1.5's projector sees (layer -2, CLS dropped) and the pooled CLS output."""
    outputs = model(pixel_values=pixel_values, output_hidden_states=True)
    return outputs.hidden_states[-2][:, 1:], outputs.pooler_output


def _blip2_features(
    model: Blip2ForConditionalGeneration, pixel_values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What MiniGPT-4's projection sees (the Q-Former's query outputs) and the vision model's patch outputs."""
    image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    query_tokens = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    mask = torch.ones(image_embeds.shape[:2], dtype=torch.long)
    queries = model.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds, encoder_attention_mask=mask)
    return queries.last_hidden_state, image_embeds[:, 1:]


def _connector_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The features a demo connector is trained on: CLIP's layer -2 patches or BLIP-2's query outputs."""
    if isinstance(model, Blip2ForConditionalGeneration):
        return _blip2_features(model, pixel_values)[0]
    return _clip_features(model, pixel_values)[0]


def _vision_loss(
    model: nn.Module, heads: _AttributeHeads, pixel_values: torch.Tensor, targets: dict[str, torch.Tensor]
) -> torch.Tensor:
    """CLIP: patch labels and the whole scene from every layer -2 patch, the scene from the pooled output.
    BLIP-2: patch labels from the vision model, the whole scene from every query output and from their mean."""
    if isinstance(model, Blip2ForConditionalGeneration):
        queries, patches = _blip2_features(model, pixel_values)
        scene_loss = heads.scene_loss(queries, targets) + heads.scene_loss(queries.mean(1), targets)
    else:
        patches, pooled = _clip_features(model, pixel_values)
        scene_loss = heads.scene_loss(patches, targets) + heads.scene_loss(pooled, targets)
    return heads.patch_loss(patches, targets) + scene_loss


def _pixel_values(image_processor: Any, scenes: Sequence[Scene]) -> torch.Tensor:
    images = [scene.render(IMAGE_SIZE) for scene in scenes]
    return torch.cat(
        [image_processor(images[i : i + 512], return_tensors="pt").pixel_values for i in range(0, len(images), 512)]
    )


def _pretrain_vision(
    model: nn.Module, image_processor: Any, quick: bool, desc: str, verbose: bool
) -> dict[str, float]:
    """Train `model` with attribute heads on `"pretrain"` scenes; returns the quality checks: attribute probes of
    the pretrained features and, as a baseline, of the same tower before pretraining (`random_init_probe_*`)."""
    initial = copy.deepcopy(model).eval()
    schedule = _SCHEDULES["vision", quick]
    scenes = make_scenes(schedule.num_images, "pretrain", seed=_SEED)
    pixel_values = _pixel_values(image_processor, scenes)
    targets = _scene_targets(scenes, IMAGE_SIZE // PATCH_SIZE)
    heads = _AttributeHeads(getattr(model.config, "qformer_config", model.config).hidden_size)  # BLIP-2: 64 both
    generator = torch.Generator().manual_seed(_SEED)

    def next_loss() -> torch.Tensor:
        index = torch.randint(len(scenes), (schedule.batch_size,), generator=generator)
        return _vision_loss(model, heads, pixel_values[index], {name: value[index] for name, value in targets.items()})

    model.train()
    final_loss = _train([*model.parameters(), *heads.parameters()], next_loss, schedule, desc, verbose)
    model.eval()
    metrics = {"final_train_loss": final_loss, **_probe(model, image_processor, *_PROBE_IMAGES[quick])}
    baseline = _probe(initial, image_processor, *_PROBE_IMAGES[quick])
    return metrics | {f"random_init_{name}": value for name, value in baseline.items()}


def _linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> float:
    """Test accuracy of an L2-regularised multinomial logistic regression (L-BFGS) on standardised features."""
    train_x, test_x = train_x[train_y != -100], test_x[test_y != -100]
    train_y, test_y = train_y[train_y != -100], test_y[test_y != -100]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-5
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(train_x.shape[1], int(train_y.max()) + 1, requires_grad=True)
    bias = torch.zeros(weight.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(train_x @ weight + bias, train_y) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(((test_x @ weight + bias).argmax(-1) == test_y).float().mean())


@torch.no_grad()
def _probe(model: nn.Module, image_processor: Any, num_train: int, num_test: int) -> dict[str, float]:
    """Linear probes from mean-pooled connector features of `"train"` scenes to attributes of `"test"` scenes.

    Pooling asks each token to carry the scene (as the LM's attention will need), and the position probe fails
    without pretraining. Like the demo's connector, the probe only sees the combinations of `"train"` while half of
    the `"test"` scenes show others: features that tie shape to colour score low here.
    """
    split_data = []
    for split, count in (("train", num_train), ("test", num_test)):
        scenes = make_scenes(count, split, seed=_SEED + 1)  # not the demo's own scenes (seed 0)
        pixel_values = _pixel_values(image_processor, scenes)
        batches = pixel_values.split(256)
        pooled = torch.cat([_connector_features(model, batch).mean(1) for batch in batches])
        split_data.append((pooled, _scene_targets(scenes, IMAGE_SIZE // PATCH_SIZE)))
    (train_x, train_t), (test_x, test_t) = split_data
    with torch.enable_grad():
        return {
            f"probe_{name}": round(_linear_probe(train_x, train_t[name], test_x, test_t[name]), 4)
            for name, _ in _ATTRIBUTES
        }


def _clip_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def _blip_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _build_clip(folder: Path, quick: bool, verbose: bool) -> dict[str, float]:
    config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=64,
    )
    model = CLIPVisionModel(config)
    image_processor = _clip_image_processor()
    metrics = _pretrain_vision(model, image_processor, quick, "tiny-clip-vision", verbose)
    model.save_pretrained(folder)
    _prefix_weights(folder / "model.safetensors", "vision_model.")
    image_processor.save_pretrained(folder)
    return metrics


def _prefix_weights(path: Path, prefix: str) -> None:
    """Give every tensor name `prefix`: transformers 5 saves `CLIPVisionModel` without the `vision_model.` level,
    which transformers 4 (and the layout of OpenAI's CLIP checkpoints) has; both versions load the prefixed names."""
    with safe_open(path, "pt") as weights:
        metadata = weights.metadata()
        tensors = {
            name if name.startswith(prefix) else prefix + name: weights.get_tensor(name) for name in weights.keys()
        }
    save_file(tensors, path, metadata=metadata)


def tiny_clip_vision(cache_dir: str | Path | None = None, quick: bool = False, verbose: bool = True) -> Path:
    """Folder with a pretrained `CLIPVisionModel` (48 px, patch 8, hidden 64, 3 layers) and its image processor."""
    return _cached("tiny-clip-vision", cache_dir, quick, verbose, _build_clip)


def _blip2_config() -> Blip2Config:
    vision = Blip2VisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        initializer_range=0.02,  # the 1e-10 default leaves a tower to be trained all but zero
    )
    qformer = Blip2QFormerConfig(
        vocab_size=64,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=64,
        cross_attention_frequency=1,
        encoder_hidden_size=64,
    )
    # MiniGPT-4 never runs BLIP-2's language model: a random one-layer OPT keeps the checkpoint layout real.
    text = OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
    )


def _build_blip2(folder: Path, quick: bool, verbose: bool) -> dict[str, float]:
    model = Blip2ForConditionalGeneration(_blip2_config())
    nn.init.normal_(model.query_tokens, std=0.02)  # BLIP-2's initialisation; transformers leaves them at zero
    image_processor = _blip_image_processor()
    metrics = _pretrain_vision(model, image_processor, quick, "tiny-blip2", verbose)
    model.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    return metrics


def tiny_blip2(cache_dir: str | Path | None = None, quick: bool = False, verbose: bool = True) -> Path:
    """Folder with a BLIP-2 checkpoint whose vision model, Q-Former (2 layers) and 8 query tokens are pretrained."""
    return _cached("tiny-blip2", cache_dir, quick, verbose, _build_blip2)


def probe_vision_features(path: str | Path, num_train: int = 600, num_test: int = 300) -> dict[str, float]:
    """Attribute probe accuracies (held-out scenes) of a saved [`tiny_clip_vision`] or [`tiny_blip2`] folder.

    Features are those the connector sees: CLIP's layer -2 patch features (CLS dropped) or BLIP-2's query outputs.
    Chance is 1/6 for colour, 1/5 for shape and position, 1/3 for count.
    """
    if AutoConfig.from_pretrained(path).model_type == "blip-2":
        model_class, processor_class = Blip2ForConditionalGeneration, BlipImageProcessor
    else:
        model_class, processor_class = CLIPVisionModel, CLIPImageProcessor
    model, image_processor = model_class.from_pretrained(path).eval(), processor_class.from_pretrained(path)
    with _build_context(_SEED):
        return _probe(model, image_processor, num_train, num_test)


def build_all(cache_dir: str | Path | None = None, quick: bool = False, verbose: bool = True) -> dict[str, Path]:
    """Build (or find) every component; returns `{"lm": ..., "clip_vision": ..., "blip2": ...}` folders."""
    return {
        "lm": tiny_tokenizer_and_lm(cache_dir, quick, verbose),
        "clip_vision": tiny_clip_vision(cache_dir, quick, verbose),
        "blip2": tiny_blip2(cache_dir, quick, verbose),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """`python -m minillava.train.demo.components [--cache-dir DIR] [--quick]`: build and print what was built."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help=f"default: ${CACHE_ENV} or ~/.cache/minillava/components")
    parser.add_argument("--quick", action="store_true", help="reduced pretraining, for `minillava demo --quick`")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = build_all(args.cache_dir, quick=args.quick)
    for name, path in paths.items():
        info = json.loads((path / BUILD_INFO_NAME).read_text())
        print(f"{name:12s} {path}  (built in {info['build_seconds']}s)  {json.dumps(info['metrics'])}")
    print(f"total {time.perf_counter() - start:.1f}s")
    return paths


if __name__ == "__main__":
    main()
