"""`minillava chat`: a conversation with a model in the terminal, its answers streamed as they are generated.

```bash
minillava chat llava-1.5-7b --image photo.jpg
minillava chat me/llava-1.5-7b-lora --load_in_4bit --do_sample --temperature 0.2 --seed 0
```

Type a message and press Enter. `/image PATH` gives the next message an image (`--image` gives the first one its
image, so the whole conversation sees it), `/reset` starts a new conversation, `/save FILE` writes the conversation
as LLaVA conversation JSON (training data for `minillava sft`: a file that holds such a list already gets the
conversation added), `/help` lists the commands, `/quit` or Ctrl-D ends, Ctrl-C stops an answer. MODEL is any
`AutoModelForImageTextToText` folder or Hub id, or a PEFT adapter folder or Hub id (its base is loaded from its
`adapter_config.json`, then the adapter on it). Answers stop at EOS and at the template's turn separator
(MiniGPT-4's `###`).

The pieces here (the conversation as transformers chat `messages` with its images, streamed generation, the LLaVA
JSON export) are what `minillava web` serves too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..eval.run import (
    DTYPES,
    add_loading_arguments,
    generation_kwargs,
    load_model,
    model_inputs,
    turn_separator_of,
)


logger = logging.getLogger(__name__)

# LLaVA's Gradio demo's sampling defaults (used with --do_sample; decoding is greedy without it) and its answer cap.
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.7
# The largest image file accepted (the pixel limits are train/data.py's: MAX_PADDED_PIXELS, MAX_ASPECT_RATIO).
DEFAULT_MAX_IMAGE_MB = 20.0
# What LLaVA conversation JSON writes for each image (`<image>\n` before the question, as LLaVA's data does).
IMAGE_PLACEHOLDER = "<image>"
HELP = (
    "commands: /image PATH (an image for your next message), /reset (new conversation), "
    "/save FILE (the conversation as LLaVA JSON), /help, /quit; Ctrl-C stops an answer"
)


class ChatError(ValueError):
    """A request that cannot be served (a bad image, an empty message, a file that cannot be written): its message
    is meant for the person chatting."""


# ----------------------------------------------------------------------------------------------------------------
# loading


@dataclass
class Sampling:
    """How answers are decoded: greedy unless `do_sample`; `seed` seeds the sampling once, when the model is set up."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    do_sample: bool = False
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None

    def check(self) -> None:
        """Raises [`ChatError`] for values `generate` would refuse or misuse."""
        if self.max_new_tokens < 1:
            raise ChatError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ChatError(f"temperature must be above 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ChatError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self, model: Any, processor: Any) -> dict[str, Any]:
        """`model.generate` kwargs: `minillava eval`'s (stop at EOS and at the turn separator), sampling if asked."""
        kwargs = generation_kwargs(model, processor, self.max_new_tokens)
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=None)
        return kwargs


def adapter_base(model_path: str) -> str | None:
    """The base model named by `model_path`'s `adapter_config.json` when it is a PEFT adapter (a folder or a Hub
    id), else None. Raises [`ChatError`] for a path that does not exist or an adapter that names no base."""
    local = Path(model_path).expanduser()
    if local.is_dir():
        if not (local / "adapter_config.json").is_file():
            return None
    elif local.exists() or model_path.startswith((".", "/", "~")) or model_path.count("/") > 1:
        raise ChatError(f"no model folder {model_path}")
    else:
        from transformers.utils import find_adapter_config_file

        try:
            if find_adapter_config_file(model_path) is None:
                return None
        except OSError:  # not reachable as an adapter: loading it as a model says why
            return None
    from peft import PeftConfig

    base = PeftConfig.from_pretrained(str(local) if local.is_dir() else model_path).base_model_name_or_path
    if not base:
        raise ChatError(f"the adapter {model_path} does not name its base model (base_model_name_or_path)")
    return base


def four_bit_config(model_path: str, dtype: str = "auto", trust_remote_code: bool = False) -> Any:
    """A `BitsAndBytesConfig` quantizing the language model of `model_path` to 4-bit NF4 (double quantization, as
    QLoRA and LLaVA's `--load-4bit`); the vision tower, the connector (and MiniGPT-4's Q-Former) and `lm_head` stay
    as they are ([`minillava.train.training.recipes.quantization_skip_modules`]). Computes in `dtype` (`auto`: the
    checkpoint's floating dtype, else float32)."""
    import torch
    from transformers import AutoConfig, BitsAndBytesConfig

    import minillava.modeling  # noqa: F401  (registers the minillava configs)

    from ..training.recipes import ARCH_MODULES, quantization_skip_modules

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    if dtype == "auto":
        configs = (config, config.get_text_config()) if hasattr(config, "get_text_config") else (config,)
        saved = next((d for c in configs if (d := getattr(c, "dtype", None) or getattr(c, "torch_dtype", None))), None)
        saved = getattr(torch, saved) if isinstance(saved, str) else saved
        compute = saved if isinstance(saved, torch.dtype) and saved.is_floating_point else torch.float32
    else:
        compute = getattr(torch, dtype)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )
    if config.model_type in ARCH_MODULES:
        quantization.llm_int8_skip_modules = quantization_skip_modules(config.model_type)
    else:
        logger.warning(
            "%s is a %r model, not minillava's: 4-bit quantization uses transformers' default modules to skip, "
            "which may quantize its vision tower too",
            model_path,
            config.model_type,
        )
    return quantization


def _adapter_processor(adapter: str, trust_remote_code: bool) -> Any | None:
    """The processor saved with an adapter (`minillava sft` saves one), or None when it has none with images."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(adapter, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.info("No processor in %s (%s): the base model's is used", adapter, error)
        return None
    return processor if getattr(processor, "image_processor", None) is not None else None


def load_chat_model(
    model_path: str,
    dtype: str = "auto",
    device: str | None = None,
    load_in_4bit: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """`(model, processor)` in eval mode, as `minillava eval` loads them ([`load_model`]), from a model folder or Hub
    id, or from a PEFT adapter: its base model, then the adapter on it (`PeftModel`), with the adapter's processor
    where it has one, else the base's. `load_in_4bit` quantizes the language model ([`four_bit_config`])."""
    if dtype not in DTYPES:
        raise ChatError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    base = adapter_base(model_path)
    source = base or model_path
    quantization = four_bit_config(source, dtype, trust_remote_code) if load_in_4bit else None
    model, processor = load_model(source, dtype, device, trust_remote_code, attn_implementation, quantization)
    if base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_path).eval()
        processor = _adapter_processor(model_path, trust_remote_code) or processor
    return model, processor


# ----------------------------------------------------------------------------------------------------------------
# images


def open_image(
    source: str | os.PathLike | bytes, name: str | None = None, max_bytes: int = int(DEFAULT_MAX_IMAGE_MB * 2**20)
) -> Any:
    """`source` (a file, or the bytes of one) decoded to an upright RGB PIL image, checked as `minillava sft`
    checks its samples' images (header first: a size that LLaVA's pad-to-square makes too large, an aspect ratio
    beyond 50:1). Raises [`ChatError`] naming `name` for a missing file, a file over `max_bytes`, or one that is
    not an image."""
    from PIL import Image

    from ..training.data import BadSampleError, load_image, probe_image

    if isinstance(source, (bytes, bytearray)):
        label = name or "the uploaded image"
        size = len(source)
        ref = {"bytes": bytes(source), "path": label}
    else:
        path = Path(source).expanduser()
        label = name or str(path)
        if not path.is_file():
            raise ChatError(f"no image file {path}" if not path.is_dir() else f"{path} is a folder, not an image")
        size = path.stat().st_size
        ref = {"bytes": None, "path": str(path)}
    if size > max_bytes:
        raise ChatError(
            f"{label} is {size / 2**20:.1f} MiB, larger than the {max_bytes / 2**20:.1f} MiB an image may be"
        )
    try:
        with warnings.catch_warnings():  # the size limits are checked here, against the padded square
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            probe_image(ref)
            return load_image(ref)
    except BadSampleError as error:
        if error.kind == "unreadable image":
            raise ChatError(f"{label} is not an image (no image format could read it)") from None
        raise ChatError(str(error)) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:  # truncated or corrupt data
        raise ChatError(f"{label} cannot be decoded: {error}") from None


# ----------------------------------------------------------------------------------------------------------------
# the conversation


def _new_id() -> str:
    return f"minillava-chat-{uuid.uuid4().hex[:12]}"


@dataclass
class Conversation:
    """One conversation: its turns as transformers chat `messages` (a `{"type": "image"}` part before the text of a
    user turn that has an image), the images in the order their parts come, the file each came from (None for an
    upload), and the image waiting for the next user turn."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)
    image_paths: list[str | None] = field(default_factory=list)
    pending_image: Any = None
    pending_path: str | None = None
    id: str = field(default_factory=_new_id)

    def set_image(self, image: Any, path: str | os.PathLike | None = None) -> None:
        """Gives the next user turn `image` (read from `path`, if from a file); replaces one set before it."""
        self.pending_image = image
        self.pending_path = None if path is None else str(Path(path).expanduser().resolve())

    def add_user(self, text: str) -> None:
        """Appends a user turn with `text`, and the pending image if there is one."""
        content: list[dict[str, Any]] = []
        if self.pending_image is not None:
            content.append({"type": "image"})
            self.images.append(self.pending_image)
            self.image_paths.append(self.pending_path)
            self.pending_image, self.pending_path = None, None
        content.append({"type": "text", "text": text})
        self.messages.append({"role": "user", "content": content})

    def undo_user(self) -> None:
        """Removes the last turn (a user turn that got no answer); its image waits for the next one again."""
        message = self.messages.pop()
        if any(part["type"] == "image" for part in message["content"]):
            self.pending_image, self.pending_path = self.images.pop(), self.image_paths.pop()

    def add_assistant(self, text: str) -> None:
        """Appends an assistant turn."""
        self.messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})

    def reset(self) -> None:
        """Starts over: no turn, no image, a new id."""
        self.messages.clear()
        self.images.clear()
        self.image_paths.clear()
        self.pending_image, self.pending_path = None, None
        self.id = _new_id()

    @property
    def num_answers(self) -> int:
        """How many assistant turns the conversation has."""
        return sum(message["role"] == "assistant" for message in self.messages)

    def prompt(self, processor: Any) -> str:
        """The conversation in the processor's chat template, ending with the prompt for the next answer."""
        return processor.apply_chat_template(self.messages, add_generation_prompt=True)

    def to_llava(self, folder: str | os.PathLike | None = None) -> dict[str, Any]:
        """The conversation as a LLaVA conversation record (`id`, `image`: one path or a list, `conversations` of
        `{"from": "human" | "gpt", "value"}` with `<image>\\n` before the text of each turn that has one). Image
        paths under `folder` (the JSON file's) are written relative to it, others absolute. Raises [`ChatError`]
        for a conversation without answer or with an uploaded image (no file to point to)."""
        if not self.num_answers:
            raise ChatError("nothing to save yet: the conversation has no answer")
        if any(path is None for path in self.image_paths):
            raise ChatError("the conversation holds an uploaded image with no file to point to: it cannot be saved")
        root = None if folder is None else os.path.abspath(folder)
        paths = []
        for path in self.image_paths:
            inside = root is not None and os.path.commonpath([root, path]) == root
            paths.append(Path(os.path.relpath(path, root)).as_posix() if inside else path)
        turns = []
        for message in self.messages:
            images = sum(part["type"] == "image" for part in message["content"])
            text = " ".join(part["text"] for part in message["content"] if part["type"] == "text")
            turns.append(
                {
                    "from": "human" if message["role"] == "user" else "gpt",
                    "value": f"{IMAGE_PLACEHOLDER}\n" * images + text,
                }
            )
        record: dict[str, Any] = {"id": self.id}
        if paths:
            record["image"] = paths[0] if len(paths) == 1 else paths
        record["conversations"] = turns
        return record


def save_llava(conversation: Conversation, path: str | os.PathLike) -> tuple[Path, int]:
    """Writes `conversation` as LLaVA conversation JSON to `path` ([`Conversation.to_llava`]): a new file holds the
    one record; a file holding a JSON list already gets it added (or, saved again, updated by its id). Written
    whole, then renamed into place. Returns the path and how many conversations it holds."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ChatError(f"{path} is a folder: give a file name, e.g. {path / 'conversations.json'}")
    record = conversation.to_llava(path.resolve().parent)
    records: list[Any] = []
    if path.exists():
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ChatError(f"{path} exists and is not a JSON file ({error}): not overwritten") from None
        if not isinstance(records, list):
            raise ChatError(f"{path} exists and holds no JSON list of conversations: not overwritten")
    same = [index for index, item in enumerate(records) if isinstance(item, dict) and item.get("id") == record["id"]]
    if same:
        records[same[0]] = record
    else:
        records.append(record)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise ChatError(f"cannot write {path}: {error}") from None
    return path, len(records)


# ----------------------------------------------------------------------------------------------------------------
# streamed answers


class SeparatorCut:
    """Passes streamed text on up to a turn separator: a tail that may be the separator's start is held back until
    the next piece tells, and the separator and all after it are dropped."""

    def __init__(self, separator: str | None):
        self.separator = separator or None
        self.text = ""
        self.sent = 0
        self.done = False

    def feed(self, piece: str) -> str:
        """What of `piece` can be shown now."""
        if self.done:
            return ""
        self.text += piece
        hold = 0
        if self.separator:
            if self.separator in self.text:
                self.text = self.text[: self.text.index(self.separator)]
                self.done = True
            else:
                hold = next(
                    (k for k in range(len(self.separator) - 1, 0, -1) if self.text.endswith(self.separator[:k])), 0
                )
        out = self.text[self.sent : len(self.text) - hold]
        self.sent += len(out)
        return out

    def finish(self) -> str:
        """The text held back when the stream ends without the separator."""
        out = self.text[self.sent :]
        self.sent = len(self.text)
        return out


class Reply:
    """An answer being generated: iterating it gives the answer's text as it comes (leading spaces and the turn
    separator left out); once iterated to its end, or closed, the answer is the conversation's last turn (what was
    generated until `stop`, if stopped; the user turn is taken back when nothing was). `answer` is its text."""

    def __init__(self, conversation: Conversation, stop: threading.Event):
        self.conversation = conversation
        self.answer = ""
        self._stop = stop
        self._pieces: Iterator[str] = iter(())
        self._started = False
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        self._started = True
        return next(self._pieces)

    def stop(self) -> None:
        """Asks generation to end after the current token."""
        self._stop.set()

    def close(self) -> None:
        """Stops generation and records what was generated (a reply never iterated takes its user turn back)."""
        self._stop.set()
        if not self._started and not self._closed:
            self.conversation.undo_user()
        self._closed = True
        self._pieces.close()


class ChatModel:
    """A model and its processor answering [`Conversation`]s one at a time (a lock serializes generation), with
    the answer streamed: `generate` runs in a thread writing to transformers' `TextIteratorStreamer`."""

    def __init__(self, model: Any, processor: Any, sampling: Sampling | None = None, name: str | None = None):
        self.model = model
        self.processor = processor
        self.sampling = sampling or Sampling()
        self.sampling.check()
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self.separator = turn_separator_of(processor)
        self.image_token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
        self._lock = threading.Lock()
        if self.sampling.seed is not None:
            from transformers import set_seed

            set_seed(self.sampling.seed)

    def context_length(self) -> int | None:
        """The language model's `max_position_embeddings`, if it says."""
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        return getattr(text_config, "max_position_embeddings", None)

    def reply(self, conversation: Conversation, text: str) -> Reply:
        """Adds the user turn `text` (with the conversation's pending image) and starts generating its answer;
        returns the [`Reply`] to iterate. Raises [`ChatError`] for an empty text, one that writes the image
        placeholder itself, or a conversation longer than the model's context (the turn is then not added)."""
        text = text.strip()
        if not text:
            raise ChatError("the message is empty")
        for placeholder in dict.fromkeys((self.image_token, IMAGE_PLACEHOLDER)):
            if placeholder in text:
                raise ChatError(f"the message holds {placeholder}: give images with /image PATH (or the upload)")
        conversation.add_user(text)
        try:
            inputs = model_inputs(
                self.model, self.processor, [conversation.prompt(self.processor)], conversation.images
            )
            kwargs = self.sampling.generate_kwargs(self.model, self.processor)
            length, limit = inputs["input_ids"].shape[1], self.context_length()
            if limit is not None:
                if length >= limit:
                    raise ChatError(
                        f"the conversation is {length} tokens, as long as the model's context ({limit}) or longer: "
                        "/reset to start a new one"
                    )
                kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], limit - length)
        except ChatError:
            conversation.undo_user()
            raise
        except (ValueError, TypeError, OSError) as error:  # the processor refusing the turn
            conversation.undo_user()
            raise ChatError(f"cannot prepare the model's input: {error}") from None
        reply = Reply(conversation, threading.Event())
        reply._pieces = self._stream(reply, inputs, kwargs)
        return reply

    def _stream(self, reply: Reply, inputs: Any, kwargs: dict[str, Any]) -> Iterator[str]:
        """Runs `generate` in a thread (one at a time) and yields the answer's text as the streamer decodes it."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **_) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        conversation, stop = reply.conversation, reply._stop
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        **kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                    )
            except BaseException as error:  # noqa: BLE001  (reported to the reader of the stream)
                failure.append(error)
                streamer.end()
            finally:
                self._lock.release()

        cut, started, answer = SeparatorCut(self.separator), False, []
        self._lock.acquire()
        thread = threading.Thread(target=generate, name="minillava-generate", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._lock.release()
            conversation.undo_user()
            raise
        try:
            for piece in streamer:
                out = cut.feed(piece)
                if not started:
                    out = out.lstrip()
                    started = bool(out)
                if out:
                    answer.append(out)
                    yield out
                if cut.done:
                    stop.set()  # the stop string ends generate too; this only spares the tokens after it
            rest = cut.finish()
            rest = (rest if started else rest.lstrip()).rstrip()
            if rest:
                answer.append(rest)
                yield rest
            if failure:
                raise ChatError(f"generation failed: {failure[0]}")
        finally:
            stop.set()
            thread.join()
            reply.answer = "".join(answer).strip()
            if reply.answer:
                conversation.add_assistant(reply.answer)
            else:
                conversation.undo_user()


# ----------------------------------------------------------------------------------------------------------------
# the terminal


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def chat_loop(
    chat: ChatModel,
    conversation: Conversation | None = None,
    read: Callable[[str], str] = input,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    max_image_bytes: int = int(DEFAULT_MAX_IMAGE_MB * 2**20),
) -> Conversation:
    """Reads messages and commands with `read` until EOF or `/quit`, writing streamed answers to `out` and errors
    to `err`; returns the conversation."""
    out = out or sys.stdout
    err = err or sys.stderr
    conversation = conversation or Conversation()

    def say(text: str, stream: IO[str] = out, end: str = "\n") -> None:
        stream.write(text + end)
        stream.flush()

    while True:
        try:
            line = read("USER: ")
        except (EOFError, KeyboardInterrupt):
            say("")
            return conversation
        line = line.strip()
        if not line:
            continue
        if line.startswith("/") and not line.startswith("//"):
            command, _, argument = line.partition(" ")
            argument = argument.strip()
            try:
                if command in ("/quit", "/exit"):
                    return conversation
                if command == "/help":
                    say(HELP)
                elif command == "/reset":
                    conversation.reset()
                    say("new conversation (no image: /image PATH gives the next message one)")
                elif command == "/image":
                    if not argument:
                        raise ChatError("/image needs a path: /image PATH")
                    image = open_image(argument, max_bytes=max_image_bytes)
                    conversation.set_image(image, argument)
                    say(f"image {argument} ({image.width}x{image.height}) goes with your next message")
                elif command == "/save":
                    if not argument:
                        raise ChatError("/save needs a file: /save FILE")
                    path, count = save_llava(conversation, argument)
                    say(
                        f"saved the conversation ({_count(conversation.num_answers, 'answer')}) to {path} as LLaVA JSON "
                        f"({_count(count, 'conversation')} in the file)"
                    )
                else:
                    raise ChatError(f"unknown command {command}: /help lists the commands")
            except ChatError as error:
                say(f"error: {error}", err)
            continue
        if line.startswith("//"):
            line = line[1:]
        try:
            reply = chat.reply(conversation, line)
        except ChatError as error:
            say(f"error: {error}", err)
            continue
        say("ASSISTANT: ", end="")
        try:
            for piece in reply:
                say(piece, end="")
            say("")
        except KeyboardInterrupt:
            reply.close()
            say(" [stopped]")
        except ChatError as error:
            say("")
            say(f"error: {error}", err)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minillava chat",
        description=__doc__.split("\n\n")[0],
        epilog=HELP,
    )
    add_model_arguments(parser)
    parser.add_argument("--image", help="an image for the first message (the whole conversation sees it)")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model, loading and sampling flags `minillava chat` and `minillava web` share."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="an AutoModelForImageTextToText folder or Hub id, or a PEFT adapter folder or Hub id (its base is "
        "loaded, then the adapter)",
    )
    parser.add_argument(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"longest answer in tokens (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--do_sample", "--do-sample", action="store_true", help="sample the answers (default: greedy decoding)"
    )
    parser.add_argument(
        "--temperature", type=float, help=f"sampling temperature (with --do_sample; default {DEFAULT_TEMPERATURE})"
    )
    parser.add_argument(
        "--top_p", "--top-p", type=float, help=f"nucleus sampling (with --do_sample; default {DEFAULT_TOP_P})"
    )
    parser.add_argument("--seed", type=int, help="seed the sampling once at start: a session is reproducible")
    parser.add_argument(
        "--load_in_4bit",
        "--load-in-4bit",
        action="store_true",
        help="the language model in 4-bit NF4 (bitsandbytes); the vision tower and connector stay as saved",
    )
    add_loading_arguments(parser)
    parser.add_argument(
        "--max_image_mb",
        "--max-image-mb",
        type=float,
        default=DEFAULT_MAX_IMAGE_MB,
        help=f"the largest image file accepted, in MiB (default {DEFAULT_MAX_IMAGE_MB:g})",
    )


def sampling_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Sampling:
    """The [`Sampling`] of parsed flags; refuses sampling flags without --do_sample and bad values."""
    if not args.do_sample and (args.temperature is not None or args.top_p is not None):
        parser.error("--temperature and --top_p apply to sampling: add --do_sample (decoding is greedy without it)")
    sampling = Sampling(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=DEFAULT_TEMPERATURE if args.temperature is None else args.temperature,
        top_p=DEFAULT_TOP_P if args.top_p is None else args.top_p,
        seed=args.seed,
    )
    try:
        sampling.check()
    except ChatError as error:
        parser.error(str(error))
    if not args.max_image_mb > 0:
        parser.error("--max_image_mb must be above 0")
    return sampling


def chat_model_from_args(args: argparse.Namespace, sampling: Sampling, prog: str) -> ChatModel:
    """Loads the model the parsed flags name into a [`ChatModel`]; a model that cannot be loaded exits with why."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no weight-loading bars before the first prompt
    try:
        model, processor = load_chat_model(
            args.model,
            dtype=args.dtype,
            device=args.device,
            load_in_4bit=args.load_in_4bit,
            trust_remote_code=args.trust_remote_code,
            attn_implementation=args.attn_implementation,
        )
    except (ChatError, OSError, ValueError, ImportError) as error:
        raise SystemExit(f"{prog}: cannot load {args.model}: {error}") from None
    return ChatModel(model, processor, sampling, name=args.model)


def describe(chat: ChatModel, args: argparse.Namespace) -> str:
    """One line saying what was loaded."""
    model = chat.model
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    notes = [kind]
    if type(model).__name__.startswith("Peft"):
        base = model.peft_config[model.active_adapter].base_model_name_or_path
        notes.append(f"PEFT adapter on {base}")
    if args.load_in_4bit:
        notes.append("language model in 4-bit")
    notes.append(
        f"sampling, temperature {chat.sampling.temperature}, top_p {chat.sampling.top_p}"
        if chat.sampling.do_sample
        else "greedy"
    )
    if chat.separator:
        notes.append(f"answers end at {chat.separator!r}")
    return f"{args.model} ({', '.join(notes)}) on {model.device}"


def main(argv: list[str] | None = None) -> Conversation:
    """`minillava chat MODEL [--image PATH] [flags]`."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = make_parser()
    args = parser.parse_args(argv)
    sampling = sampling_from_args(parser, args)
    max_image_bytes = int(args.max_image_mb * 2**20)
    conversation = Conversation()
    if args.image:  # before the model loads: a bad path fails at once
        try:
            conversation.set_image(open_image(args.image, max_bytes=max_image_bytes), args.image)
        except ChatError as error:
            raise SystemExit(f"minillava chat: {error}") from None
    chat = chat_model_from_args(args, sampling, "minillava chat")
    read = input
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    print(f"minillava chat: {describe(chat, args)}")
    if args.image:
        print(f"image {args.image} goes with your first message")
    print(HELP, flush=True)
    return chat_loop(chat, conversation, read=read, max_image_bytes=max_image_bytes)


__all__ = [
    "DEFAULT_MAX_IMAGE_MB",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_TOP_P",
    "ChatError",
    "ChatModel",
    "Conversation",
    "Reply",
    "Sampling",
    "SeparatorCut",
    "adapter_base",
    "add_model_arguments",
    "chat_loop",
    "chat_model_from_args",
    "describe",
    "four_bit_config",
    "load_chat_model",
    "main",
    "make_parser",
    "open_image",
    "sampling_from_args",
    "save_llava",
]
