"""A minillava folder evaluates in lmms-eval as it is: `python -m lmms_eval --model huggingface --model_args
pretrained=FOLDER,trust_remote_code=True` (the README's command), on a local task over LLaVA-style questions, gives
the answers `minillava eval` gives.

lmms-eval pulls torchvision, OpenCV, wandb and more, so it lives in its own environment: MINILLAVA_LMMS_EVAL_PYTHON
names a Python that has it (skipped otherwise), e.g.
`python3 -m venv .venv-lmms && .venv-lmms/bin/pip install torch==2.14.1 torchvision==0.29.1 lmms-eval`."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from tiny import make_image, save_parts

from minillava.train.eval import SHORT_ANSWER_PROMPT
from minillava.train.eval.run import evaluate_model
from minillava.train.training.build import BuildArguments, build


LMMS_PYTHON = os.environ.get("MINILLAVA_LMMS_EVAL_PYTHON")
pytestmark = pytest.mark.skipif(
    not LMMS_PYTHON, reason="MINILLAVA_LMMS_EVAL_PYTHON is not set: no environment with lmms-eval to run"
)

# with the response-format prompt already in, so that `minillava eval --benchmark vqa` asks the same prompt
QUESTION = f"What is it?\n{SHORT_ANSWER_PROMPT}"
TASK = """task: minillava_tiny_vqa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 6
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""
UTILS = """from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["text"]
"""


@pytest.mark.parametrize("arch, vision", [("llava-1.5", "clip"), ("minigpt4", "blip2")])
def test_lmms_eval_generic_model_answers_as_minillava_eval(arch, vision, tmp_path):
    parts = save_parts(tmp_path / "parts")
    folder = tmp_path / arch
    build(BuildArguments(arch=arch, vision_model=parts[vision], text_model=parts["llama"], output_dir=str(folder)))
    images = tmp_path / "images"
    images.mkdir()
    questions = []
    for index in range(4):
        make_image(index, size=(24 + index, 20)).save(images / f"{index}.png")
        questions.append({"question_id": index, "image": str(images / f"{index}.png"), "text": QUESTION,
                          "answer": "circle"})  # fmt: skip
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(question) + "\n" for question in questions))
    task = tmp_path / "task"
    task.mkdir()
    (task / "tiny_vqa.yaml").write_text(TASK.format(data=data))
    (task / "utils.py").write_text(UTILS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("PYTHONPATH", None)
    command = [
        LMMS_PYTHON, "-m", "lmms_eval", "--model", "huggingface",
        "--model_args", f"pretrained={folder},trust_remote_code=True,device=cpu,device_map=cpu",
        "--tasks", "minillava_tiny_vqa", "--include_path", str(task), "--batch_size", "1",
        "--output_path", str(tmp_path / "lmms"), "--log_samples",
    ]  # fmt: skip
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    samples_file = next(Path(tmp_path / "lmms").rglob("*samples_minillava_tiny_vqa.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert len(samples) == 4
    evaluate_model(str(folder), "vqa", data, None, tmp_path / "ours", batch_size=1, max_new_tokens=6)
    lines = (tmp_path / "ours" / "answers.jsonl").read_text().splitlines()
    answers = {json.loads(line)["question_id"]: json.loads(line)["text"] for line in lines}
    for sample in samples:
        # lmms-eval passes the tokenizer's eos alone, so MiniGPT-4 may write on past its `###`, where ours stops
        theirs = sample.get("resps", sample["filtered_resps"])  # the log leaves `resps` out when both agree
        theirs = (theirs if isinstance(theirs, str) else theirs[0][0]).strip()
        mine = answers[questions[sample["doc_id"]]["question_id"]]
        assert theirs.split("###")[0].strip() == mine.strip(), sample
