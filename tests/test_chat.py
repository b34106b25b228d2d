"""`minillava chat` (`minillava.train.chat.terminal`): driven through a pseudo-terminal and through piped input with tiny
models rewired so that greedy decoding writes a known answer, slowed down per decoding step so that streaming shows:
the answer arrives in pieces while it is generated, `/image` (good and bad images), `/reset`, `/save` read back by
minillava's own data reader without a skip, Ctrl-C stopping an answer, MiniGPT-4's answers stopping at `###`, a PEFT
adapter folder as MODEL, `--load_in_4bit` quantizing the language model only, sampling flags and their errors."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from hub_server import TOKEN, USER, client_env, serve_hub
from PIL import Image
from sft_helpers import build_tiny_models
from test_eval_run import save_scripted
from tiny import llama_config, make_image, make_tokenizer

from minillava.train.chat.terminal import (
    ChatError,
    ChatModel,
    Conversation,
    Sampling,
    SeparatorCut,
    load_chat_model,
    main,
    open_image,
    save_llava,
)
from minillava.train.training.build import BuildArguments, build
from minillava.train.training.data import load_sft_dataset


# What the rewired models write after any prompt, as tokens of tests/tiny.py's tokenizer; MiniGPT-4's continues
# with "#" + "##" (so that only the stop string "###" ends it, no single "###" token) and then "y" forever.
WORDS = ["ĠA", "Ġhuman", "Ġand", "Ġthe", "Ġassistant"]
ANSWER = "A human and the assistant"
ADAPTER_ANSWER = "A human"
# Seconds each decoding step is made to take in the subprocesses (tests/test_web.py uses it too).
STEP_DELAY = 0.25
PROMPT = "USER: "


def build_chat_models(root: Path) -> dict[str, Path]:
    """Tiny models of both architectures rewired to answer `ANSWER`, a LoRA adapter on the LLaVA one that answers
    `ADAPTER_ANSWER` (its `lm_head` is a module to save), and a LLaVA model with a 64-wide language model (what
    bitsandbytes' CPU 4-bit kernels need) that answers `ANSWER` too."""
    built = {arch: folder for arch, (folder, _) in build_tiny_models(root / "built").items()}
    models = {
        "llava": save_scripted(built["llava-1.5"], root / "llava", WORDS),
        "minigpt4": save_scripted(built["minigpt4"], root / "minigpt4", [*WORDS, "#", "##"], "y"),
        "llava-random": built["llava-1.5"],
    }
    models["adapter"] = save_adapter(models["llava"], root / "adapter")
    parts = {"clip": str(root / "built" / "parts" / "clip")}  # build_tiny_models' CLIP tower
    tokenizer = make_tokenizer(image_tokens=())
    config = llama_config(len(tokenizer), hidden_size=64)
    config.intermediate_size = 128
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    LlamaForCausalLM(config).save_pretrained(root / "llama-64")
    tokenizer.save_pretrained(root / "llama-64")
    build(
        BuildArguments(
            arch="llava-1.5",
            vision_model=parts["clip"],
            text_model=str(root / "llama-64"),
            output_dir=str(root / "llava-64-built"),
        )
    )
    models["llava-64"] = save_scripted(root / "llava-64-built", root / "llava-64", WORDS)
    return models


def save_adapter(base: Path, folder: Path, with_processor: bool = True) -> Path:
    """A LoRA adapter on `base` (LoRA on q_proj, at PEFT's no-op init, and `lm_head` saved whole) whose `lm_head`
    ends the answer after "human" (`save_scripted` maps the basis vector of the chain's position p to its next
    token, "human" being position 2)."""
    from peft import LoraConfig, get_peft_model

    model, processor = load_chat_model(str(base), device="cpu")
    tokenizer = processor.tokenizer
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]))
    head = peft_model.base_model.model.lm_head.modules_to_save["default"].weight
    with torch.no_grad():
        head[:, 2] = 0.0
        head[tokenizer.eos_token_id, 2] = 10.0
    peft_model.save_pretrained(folder)
    if with_processor:
        processor.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == base
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_chat_models(tmp_path_factory.mktemp("chat-models"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chat-images")
    paths = {"red": folder / "red.png", "noise": folder / "noise.jpg", "bad": folder / "not-an-image.png"}
    Image.new("RGB", (30, 20), "red").save(paths["red"])
    make_image(3, size=(24, 40)).save(paths["noise"])
    paths["bad"].write_text("this is text, not a PNG")
    paths["huge"] = folder / "huge.png"
    Image.new("1", (12_000, 12_000)).save(paths["huge"])  # a small file whose padded square is over the limit
    paths["strip"] = folder / "strip.png"
    Image.new("RGB", (2_000, 10)).save(paths["strip"])  # 200:1
    return paths


def slow_env(workdir: Path, vocab_size: int, delay: float = STEP_DELAY) -> dict[str, str]:
    """The environment of a subprocess whose decoding steps each take at least `delay` seconds: a `sitecustomize`
    on `PYTHONPATH` adds a global forward hook that sleeps after each call of a linear layer with `vocab_size`
    outputs (the LM head). Nothing else changes: what streams is what `generate` writes."""
    folder = workdir / "slow-decoding"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import time\n\nimport torch\n\n\n"
        "def _slow(module, args, output):\n"
        f"    if isinstance(module, torch.nn.Linear) and module.out_features == {vocab_size}:\n"
        f"        time.sleep({delay})\n\n\n"
        "torch.nn.modules.module.register_module_forward_hook(_slow)\n"
    )
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


def vocab_size(model: Path) -> int:
    return json.loads((model / "config.json").read_text())["text_config"]["vocab_size"]


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "minillava.train.cli", *args]


# ----------------------------------------------------------------------------------------------------------------
# through a pseudo-terminal


class Terminal:
    """`minillava chat` on a pseudo-terminal it has as its controlling terminal (so Ctrl-C is a real SIGINT):
    what it writes is read as it comes, each read kept with its time."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path):
        self.master, slave = pty.openpty()
        attributes = termios.tcgetattr(slave)
        attributes[3] &= ~termios.ECHO  # what is typed is not written back: the output is the program's alone
        termios.tcsetattr(slave, termios.TCSANOW, attributes)

        def controlling_terminal() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.process = subprocess.Popen(
            args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, preexec_fn=controlling_terminal
        )
        os.close(slave)
        self.output = ""
        self.cursor = 0
        self.reads: list[tuple[float, str]] = []

    def read_until(self, pattern: str, timeout: float = 90.0) -> str:
        """Reads until `pattern` (a regex) matches what came after the previous match; returns that text (ANSI
        escapes removed)."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.output[self.cursor :])):
            left = deadline - time.monotonic()
            ended = self.process.poll() is not None
            if left <= 0 or (ended and not select.select([self.master], [], [], 0)[0]):
                raise AssertionError(f"no {pattern!r} in the output:\n{self.output[-3000:]}")
            if select.select([self.master], [], [], min(left, 0.5))[0]:
                try:
                    data = os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the program ended: EIO on Linux
                    data = ""
                if data:
                    self.reads.append((time.monotonic(), data))
                    self.output += data
        text = self.output[self.cursor : self.cursor + match.end()]
        self.cursor += match.end()
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode("utf-8"))

    def close(self) -> int:
        try:
            return self.process.wait(timeout=30)
        finally:
            os.close(self.master)


def answer_reads(reads: list[tuple[float, str]], since: float) -> list[tuple[float, str]]:
    return [(when, data) for when, data in reads if when >= since]


def test_chat_streams_and_runs_its_commands_through_a_terminal(models, images, tmp_path):
    """One session: the answer streams (pieces at different times while generating); /image refuses a file that is
    not an image and one too large, and takes a good one; the answers are kept in turns; /save writes LLaVA JSON
    that minillava's data reader reads back without a skip; /reset starts over; Ctrl-C stops an answer."""
    (tmp_path / "red.png").write_bytes(images["red"].read_bytes())  # beside the saved file: a relative path
    terminal = Terminal(
        command("chat", str(models["llava"]), "--image", "red.png"),
        {**slow_env(tmp_path, vocab_size(models["llava"])), "TERM": "dumb"},
        tmp_path,
    )
    banner = terminal.read_until(PROMPT)
    assert "greedy" in banner and "red.png goes with your first message" in banner

    asked = time.monotonic()
    terminal.type("What is in the image?\n")
    text = terminal.read_until(PROMPT)
    assert text.replace("\r\n", "\n") == f"ASSISTANT: {ANSWER}\n{PROMPT}"
    # Streamed: the words came in several reads, spread over the decoding steps (each takes STEP_DELAY seconds),
    # the first of them long before the last.
    words = [
        (when, data) for when, data in terminal.reads if when >= asked and data.strip() and data.strip() in ANSWER
    ]
    assert len(words) >= 4, words
    assert words[-1][0] - words[0][0] >= 3 * STEP_DELAY * 0.8, words

    terminal.type(f"/image {images['bad']}\n")
    assert "is not an image" in terminal.read_until(PROMPT)
    terminal.type(f"/image {images['huge']}\n")
    assert "padded to a square it is 12000x12000" in terminal.read_until(PROMPT)
    terminal.type(f"/image {images['strip']}\n")
    assert "aspect ratio 200:1" in terminal.read_until(PROMPT)
    terminal.type(f"/image {tmp_path / 'missing.png'}\n")
    assert "no image file" in terminal.read_until(PROMPT)
    terminal.type(f"/image {images['noise']}\n")
    assert "(24x40) goes with your next message" in terminal.read_until(PROMPT)
    terminal.type("And this one?\n")
    assert ANSWER in terminal.read_until(PROMPT)
    terminal.type("Typing <image> myself\n")
    assert "give images with /image" in terminal.read_until(PROMPT)
    terminal.type("/save conversations.json\n")
    assert "saved the conversation (2 answers)" in terminal.read_until(PROMPT)

    terminal.type("/reset\n")
    assert "new conversation" in terminal.read_until(PROMPT)
    terminal.type("/save conversations.json\n")
    assert "nothing to save yet" in terminal.read_until(PROMPT)
    terminal.type("A question without image\n")
    assert ANSWER in terminal.read_until(PROMPT)
    terminal.type("/save conversations.json\n")
    assert "(2 conversations in the file)" in terminal.read_until(PROMPT)

    terminal.type("/reset\n")
    terminal.read_until(PROMPT)
    terminal.type("Stop me\n")
    terminal.read_until(r"ASSISTANT: A")
    terminal.type("\x03")  # Ctrl-C: SIGINT to the program, whose answer stops after the current token
    stopped = terminal.read_until(PROMPT)
    assert "[stopped]" in stopped and "assistant" not in stopped.split("[stopped]")[0]
    terminal.type("/save saved/stopped.json\n")
    assert "saved the conversation (1 answer)" in terminal.read_until(PROMPT)
    terminal.type("/bogus\n")
    assert "unknown command /bogus" in terminal.read_until(PROMPT)
    terminal.type("/quit\n")
    assert terminal.close() == 0

    saved = tmp_path / "conversations.json"
    records = json.loads(saved.read_text())
    assert [record.get("image") for record in records] == [["red.png", str(images["noise"].resolve())], None]
    first = records[0]["conversations"]
    assert [turn["from"] for turn in first] == ["human", "gpt", "human", "gpt"]
    assert first[0]["value"] == "<image>\nWhat is in the image?" and first[1]["value"] == ANSWER
    assert first[2]["value"] == "<image>\nAnd this one?"
    assert records[1]["conversations"][0] == {"from": "human", "value": "A question without image"}
    _, processor = load_chat_model(str(models["llava"]), device="cpu")
    dataset, report = load_sft_dataset(str(saved), processor)
    assert len(dataset) == 2 and not report, report.summary()
    sample = dataset[0]
    assert len(sample["images"]) == 2 and sample["images"][0].size == (30, 20)
    assert [message["role"] for message in sample["messages"]] == ["user", "assistant", "user", "assistant"]
    partial = json.loads((tmp_path / "saved" / "stopped.json").read_text())[0]["conversations"][1]["value"]
    assert partial and ANSWER.startswith(partial) and partial != ANSWER  # what was generated before Ctrl-C


# ----------------------------------------------------------------------------------------------------------------
# through piped input


def run_piped(
    args: list[str], lines: list[str], cwd: Path, timeout: float = 120, hub_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`minillava ARGS` fed `lines` on standard input; offline unless `hub_env` (`client_env`) names a Hub."""
    env = dict(os.environ)
    env.update(hub_env or {"HF_HUB_OFFLINE": "1"}, TOKENIZERS_PARALLELISM="false")
    return subprocess.run(
        command(*args),
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def assistant_lines(stdout: str) -> list[str]:
    return [line.split("ASSISTANT: ", 1)[1] for line in stdout.splitlines() if "ASSISTANT: " in line]


def test_minigpt4_answers_stop_at_the_separator(models, images, tmp_path):
    """MiniGPT-4's model writes "...assistant#" "##" then "y" forever: the answers end at "###" (the stop string),
    which is not shown, in every turn; the saved conversation reads back."""
    result = run_piped(
        [
            "chat",
            str(models["minigpt4"]),
            "--image",
            str(images["red"]),
            "--max_new_tokens",
            "40",
        ],
        ["Describe it.", "And again?", f"/save {tmp_path / 'minigpt4.json'}"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "answers end at '###'" in result.stdout
    assert assistant_lines(result.stdout) == [ANSWER, ANSWER]
    assert "#" not in result.stdout.split("ASSISTANT: ", 1)[1]
    _, processor = load_chat_model(str(models["minigpt4"]), device="cpu")
    dataset, report = load_sft_dataset(str(tmp_path / "minigpt4.json"), processor)
    assert len(dataset) == 1 and not report


def test_generation_stops_at_the_separator_not_at_max_new_tokens(models, images):
    model, processor = load_chat_model(str(models["minigpt4"]), device="cpu")
    chat = ChatModel(model, processor, Sampling(max_new_tokens=40))
    steps = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *_: steps.append(1))
    conversation = Conversation()
    conversation.set_image(open_image(images["red"]), images["red"])
    pieces = list(chat.reply(conversation, "What is it?"))
    hook.remove()
    assert "".join(pieces) == ANSWER and len(pieces) > 1
    assert len(steps) == len(WORDS) + 2  # the words, "#", "##" (the prefill gives the first)
    assert conversation.messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": ANSWER}]}
    prompt = conversation.prompt(processor)
    assert prompt.count("<Img><image></Img>") == 1 and f"{ANSWER}###" in prompt  # the history, in the template


def test_a_peft_adapter_folder_is_a_model(models, images, tmp_path):
    """The adapter folder as MODEL: its base is loaded from adapter_config.json and the adapter applied (its
    lm_head ends the answer after "human"); the base alone answers in full."""
    result = run_piped(["chat", str(models["adapter"]), "--image", str(images["red"])], ["What is it?"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PEFT adapter" in result.stdout
    assert assistant_lines(result.stdout) == [ADAPTER_ANSWER]
    # Without a processor in the adapter folder, the base's is used.
    bare = save_adapter(models["llava"], tmp_path / "bare-adapter", with_processor=False)
    model, processor = load_chat_model(str(bare), device="cpu")
    assert type(model).__name__ == "PeftModel" and processor.image_processor is not None
    conversation = Conversation()
    assert "".join(ChatModel(model, processor).reply(conversation, "Hi")) == ADAPTER_ANSWER


def test_a_peft_adapter_on_the_hub_is_a_model(models, images, tmp_path):
    """The adapter and its base pushed to the Hub (the local one, with the real client), the adapter's config naming
    the base by Hub id: `minillava chat USER/ADAPTER` loads the base from the Hub, applies the adapter and answers
    as from the folder."""
    from huggingface_hub import HfApi

    adapter = tmp_path / "adapter"
    shutil.copytree(models["adapter"], adapter)
    base_id, adapter_id = f"{USER}/chat-base", f"{USER}/chat-adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base_id}))
    with serve_hub(tmp_path / "hub", lfs=False) as endpoint:
        api = HfApi(endpoint=endpoint, token=TOKEN)
        for repo_id, folder in ((base_id, models["llava"]), (adapter_id, adapter)):
            api.create_repo(repo_id)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder))
        hub_env = client_env(endpoint, tmp_path / "hf-home")
        result = run_piped(
            ["chat", adapter_id, "--image", str(images["red"])], ["What is it?"], tmp_path, hub_env=hub_env
        )
    assert result.returncode == 0, result.stderr
    assert "PEFT adapter" in result.stdout and base_id in result.stdout
    assert assistant_lines(result.stdout) == [ADAPTER_ANSWER]


def test_load_in_4bit_quantizes_the_language_model_only(models, images, tmp_path):
    import bitsandbytes as bnb

    model, processor = load_chat_model(str(models["llava-64"]), device="cpu", load_in_4bit=True)
    quantized = {name for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    assert quantized and all(name.startswith("model.language_model.layers.") for name in quantized)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name not in quantized:
            assert module.weight.dtype == torch.float32, name  # vision tower, connector, lm_head
    assert any(name.startswith("model.multi_modal_projector") for name, _ in model.named_modules())
    result = run_piped(
        ["chat", str(models["llava-64"]), "--load_in_4bit", "--device", "cpu", "--image", str(images["noise"])],
        ["What is it?"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "language model in 4-bit" in result.stdout and assistant_lines(result.stdout) == [ANSWER]


# ----------------------------------------------------------------------------------------------------------------
# sampling, flags and errors


def test_sampling_is_seeded_and_greedy_by_default(models):
    model, processor = load_chat_model(str(models["llava-random"]), device="cpu")

    def answers(sampling: Sampling) -> list[str]:
        chat = ChatModel(model, processor, sampling)
        conversation = Conversation()
        out = []
        for question in ("Hello", "And then?"):
            reply = chat.reply(conversation, question)
            list(reply)
            out.append(reply.answer)
        return out

    greedy = Sampling(max_new_tokens=12)
    assert answers(greedy) == answers(greedy)
    sampled = [
        answers(Sampling(max_new_tokens=12, do_sample=True, temperature=2.0, top_p=1.0, seed=s)) for s in (1, 1)
    ]
    assert sampled[0] == sampled[1]
    others = {tuple(answers(Sampling(max_new_tokens=12, do_sample=True, temperature=2.0, seed=s))) for s in (2, 3, 4)}
    assert len(others | {tuple(sampled[0])}) > 1
    kwargs = Sampling(do_sample=True, temperature=0.5, top_p=0.9).generate_kwargs(model, processor)
    assert kwargs["do_sample"] is True and kwargs["temperature"] == 0.5 and kwargs["top_p"] == 0.9
    assert Sampling().generate_kwargs(model, processor)["do_sample"] is False


def test_flags_and_bad_inputs_are_refused_clearly(models, images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(models["llava"]), "--temperature", "0.5"])
    assert exit_info.value.code == 2 and "add --do_sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(models["llava"]), "--do_sample", "--top_p", "1.5"])
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not an image"):
        main([str(models["llava"]), "--image", str(images["bad"])])  # before any model is loaded
    with pytest.raises(SystemExit, match="no model folder"):
        main([str(tmp_path / "nowhere"), "--device", "cpu"])
    with pytest.raises(SystemExit, match="cannot load"):
        main([str(tmp_path), "--device", "cpu"])  # a folder without a model

    with pytest.raises(ChatError, match="larger than the 0.0 MiB"):
        open_image(images["red"], max_bytes=10)
    with pytest.raises(ChatError, match="not an image"):
        open_image(b"GIF89a but not really", name="upload.gif")
    assert open_image(images["noise"].read_bytes()).size == (24, 40)

    model, processor = load_chat_model(str(models["llava"]), device="cpu")
    chat = ChatModel(model, processor)
    conversation = Conversation()
    for text, message in (("   ", "empty"), ("see <image>", "give images with")):
        with pytest.raises(ChatError, match=message):
            chat.reply(conversation, text)
    assert conversation.messages == []
    conversation.set_image(open_image(images["red"]), images["red"])
    conversation.messages += [{"role": "user", "content": [{"type": "text", "text": "x " * 300}]}] * 2
    with pytest.raises(ChatError, match="longer"):
        chat.reply(conversation, "one more")  # past the tiny LM's 512 positions
    assert conversation.pending_image is not None  # the refused turn gave its image back
    (tmp_path / "list.json").write_text('{"not": "a list"}')
    conversation.reset()
    list(chat.reply(conversation, "hi"))
    with pytest.raises(ChatError, match="not overwritten"):
        save_llava(conversation, tmp_path / "list.json")
    path, count = save_llava(conversation, tmp_path / "new.json")
    assert count == 1 and save_llava(conversation, path)[1] == 1  # saved again: updated, not added twice
    upload = Conversation()
    upload.set_image(open_image(images["red"].read_bytes()))
    list(chat.reply(upload, "hi"))
    with pytest.raises(ChatError, match="uploaded image"):
        upload.to_llava()


def test_a_reply_closed_before_it_is_read_takes_its_turn_back(models, images):
    model, processor = load_chat_model(str(models["llava"]), device="cpu")
    chat = ChatModel(model, processor)
    conversation = Conversation()
    conversation.set_image(open_image(images["red"]), images["red"])
    chat.reply(conversation, "never read").close()
    assert conversation.messages == [] and conversation.pending_image is not None
    reply = chat.reply(conversation, "read one piece")
    assert next(reply) == "A"
    reply.close()  # stops generation: what came so far is the answer
    assert conversation.messages[-1]["role"] == "assistant" and ANSWER.startswith(reply.answer)
    assert conversation.images and conversation.pending_image is None


@pytest.mark.parametrize(
    "pieces, separator, shown",
    [
        (["Hello", " wor", "ld#", "#", "#more"], "###", ["Hello", " wor", "ld", "", ""]),
        (["a#", "b##", "c"], "###", ["a", "#b", "##c"]),
        (["x##", "#"], "###", ["x", ""]),
        (["no separator"], None, ["no separator"]),
    ],
)
def test_separator_cut(pieces, separator, shown):
    cut = SeparatorCut(separator)
    assert [cut.feed(piece) for piece in pieces] == shown
    assert cut.finish() == ""
    held = SeparatorCut("###")
    assert held.feed("end #") == "end " and held.finish() == "#"  # a stream ending without the separator
