"""Training data: every input format to TRL conversational rows, bad samples named by id and file:line, loss masks."""

import json
import logging

import numpy as np
import pytest
import torch
from datasets import Dataset, load_from_disk
from PIL import Image
from sft_helpers import build_tiny_models, llava_record, record_line, write_llava_dataset
from tiny import make_image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from minillava.processing import get_chat_template
from minillava.train.training.data import (
    MINIGPT4_ALIGNMENT_PROMPTS,
    BadSampleError,
    DataCollatorWithSampleChecks,
    infer_format,
    load_sft_dataset,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="module")
def llava_processor(built):
    return built["llava-1.5"][1]


def collator_for(processor, chat_template=None, strict=False, dataset=None):
    return DataCollatorWithSampleChecks(
        DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True, chat_template=chat_template),
        strict=strict,
        dataset=dataset,
    )


def user_parts(row, turn=0):
    return [m["content"] for m in row["messages"] if m["role"] == "user"][turn]


def test_llava_json_keeps_image_placement_and_yields_pil_rows(tmp_path, llava_processor):
    records = [
        llava_record(0),
        {
            "id": "second-turn",
            "image": "1.png",
            "conversations": [
                {"from": "human", "value": "Hello."},
                {"from": "gpt", "value": "Hi."},
                {"from": "human", "value": "Now look: <image>"},
                {"from": "gpt", "value": "A red circle."},
            ],
        },
        {"id": "text-only", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    path, images = write_llava_dataset(tmp_path, records=records)
    assert infer_format(str(path)) == "llava"
    dataset, report = load_sft_dataset(str(path), llava_processor, image_folder=str(images), max_length=512)
    assert not report and len(dataset) == 3
    first, second, text_only = dataset[0], dataset[1], dataset[2]
    assert first["id"] == "sample-0"
    assert user_parts(first) == [{"type": "image", "text": None}, {"type": "text", "text": "What is in the image?"}]
    assert user_parts(second, 0) == [{"type": "text", "text": "Hello."}]
    assert user_parts(second, 1) == [{"type": "text", "text": "Now look:"}, {"type": "image", "text": None}]
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user", "assistant"]
    assert isinstance(first["images"][0], Image.Image) and first["images"][0].mode == "RGB"
    assert first["images"][0].size == (24, 20) and text_only["images"] == []
    rendered = llava_processor.apply_chat_template(second["messages"])
    assert "USER: Hello. ASSISTANT: Hi.</s>USER: <image>\nNow look: ASSISTANT:" in rendered


def test_caption_json_renders_plain_template(tmp_path, llava_processor):
    records = [llava_record(i, question="<image>\nRender a clear and concise summary of the photo.") for i in range(2)]
    path, images = write_llava_dataset(tmp_path, records=records)
    plain = get_chat_template("plain")
    dataset, _ = load_sft_dataset(str(path), llava_processor, image_folder=str(images), chat_template=plain)
    assert (
        llava_processor.apply_chat_template(dataset[0]["messages"], chat_template=plain) == "<s><image>A red circle.\n"
    )


def test_cc_sbu_align_folder(tmp_path, built):
    processor = built["minigpt4"][1]
    (tmp_path / "image").mkdir()
    annotations = [{"image_id": str(i), "caption": f"A detailed caption number {i}."} for i in range(6)]
    for i in range(6):
        make_image(i).save(tmp_path / "image" / f"{i}.jpg")
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": annotations}, indent=1))
    assert infer_format(str(tmp_path)) == "cc_sbu_align"
    dataset, report = load_sft_dataset(str(tmp_path), processor, max_length=512)
    assert not report and len(dataset) == 6
    prompts = set()
    for row in dataset:
        (image_part, text_part), answer = user_parts(row), row["messages"][1]["content"][0]["text"]
        assert image_part["type"] == "image" and text_part["text"] in MINIGPT4_ALIGNMENT_PROMPTS
        assert answer == f"A detailed caption number {row['id']}."
        prompts.add(text_part["text"])
        rendered = processor.apply_chat_template(row["messages"])
        assert rendered == f"<s>###Human: <Img><image></Img> {text_part['text']} ###Assistant: {answer}###"
    assert len(prompts) > 1, "the instruction varies across samples, as MiniGPT-4's random choice"
    again, _ = load_sft_dataset(str(tmp_path), processor)
    assert [r["messages"] for r in again] == [r["messages"] for r in dataset], "and is the same at every run"


def test_messages_file_saved_folder_and_dataset_agree(tmp_path, llava_processor):
    for i in range(2):
        make_image(i).save(tmp_path / f"{i}.png")
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "<image>What is in the image?"},
                        {"role": "assistant", "content": "A red circle."},
                    ],
                    "images": [f"{i}.png"],
                }
            )
            for i in range(2)
        )
    )
    typed = {
        "messages": [
            [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A red circle."}]},
            ]
        ]
        * 2,
        "images": [[make_image(0)], [make_image(1)]],
    }
    Dataset.from_dict(typed).save_to_disk(tmp_path / "saved")
    assert infer_format(str(jsonl)) == "messages" and infer_format(str(tmp_path / "saved")) == "messages"
    sources = [str(jsonl), str(tmp_path / "saved"), load_from_disk(tmp_path / "saved")]
    loaded = [load_sft_dataset(source, llava_processor, max_length=512)[0] for source in sources]
    for dataset in loaded:
        assert [row["messages"] for row in dataset] == [row["messages"] for row in loaded[0]]
        for i, row in enumerate(dataset):
            assert np.array_equal(np.asarray(row["images"][0]), np.asarray(make_image(i)))


BAD_RECORDS = {
    "missing image": (llava_record(1, image="nowhere.png"), "nowhere.png is missing"),
    "unreadable image": (llava_record(2, image="not-an-image.png"), "cannot be read"),
    "no assistant turn": (
        {"id": "sample-3", "image": "3.png", "conversations": [{"from": "human", "value": "<image>\nHi"}]},
        "no assistant turn",
    ),
    "placeholder mismatch": (llava_record(4, question="<image>\n<image>\nCompare."), "more placeholders than images"),
    "fewer placeholders": (llava_record(5, question="What is in the image?"), "fewer placeholders than images"),
    "too long": (llava_record(6, question="<image>\n" + "Describe it very precisely. " * 60), "exceed max_length=300"),
    "invalid record": ({"id": "sample-7", "image": "7.png", "turns": []}, "no `conversations` list"),
    "image outside a user turn": (
        {
            "id": "sample-8",
            "image": "8.png",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "<image>\nLook."}],
        },
        "holds an image",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_RECORDS))
def test_each_bad_sample_is_skipped_and_named_by_id_and_line(tmp_path, llava_processor, kind, caplog):
    bad, reason = BAD_RECORDS[kind]
    path, images = write_llava_dataset(tmp_path, records=[llava_record(0), bad, llava_record(9)])
    (images / "not-an-image.png").write_bytes(b"this is not a PNG file")
    dataset, report = load_sft_dataset(str(path), llava_processor, image_folder=str(images), max_length=300)
    assert [row["id"] for row in dataset] == ["sample-0", "sample-9"]
    (skipped,) = report.skipped
    expected_kind = "placeholder mismatch" if kind == "fewer placeholders" else kind
    where = f"{path}:{record_line(path, bad['id'])}"
    assert skipped.kind == expected_kind and skipped.id == bad["id"] and skipped.source == where
    assert str(skipped).startswith(f"sample {bad['id']!r} ({where}): ") and reason in str(skipped)
    assert f"Skipping 1 of 3 samples (1 {expected_kind})" in report.summary()
    with pytest.raises(BadSampleError, match=rf"sample '{bad['id']}' \({path}:\d+\): .*{reason}"):
        load_sft_dataset(str(path), llava_processor, image_folder=str(images), max_length=300, strict=True)


def test_bad_jsonl_line_and_text_only_sample_in_align(tmp_path, llava_processor):
    make_image(0).save(tmp_path / "0.png")
    good = {
        "id": "good",
        "messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "A"}],
    }
    text_only = {"id": "text", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"}]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({**good, "images": ["0.png"]}) + "\n{not json\n" + json.dumps(text_only) + "\n")
    _, report = load_sft_dataset(str(path), llava_processor, require_image=True)
    assert [(s.source, s.kind) for s in report.skipped] == [(f"{path}:2", "invalid record"), (f"{path}:3", "no image")]
    assert "invalid JSON" in str(report.skipped[0]) and "sample 'text'" in str(report.skipped[1])


def test_undecodable_image_is_skipped_when_its_batch_is_built(tmp_path, llava_processor, caplog):
    records = [llava_record(i) for i in range(3)]
    path, images = write_llava_dataset(tmp_path, records=records)
    data = (images / "1.png").read_bytes()
    (images / "1.png").write_bytes(data[: len(data) // 2])  # the header reads fine, the pixels are cut
    dataset, report = load_sft_dataset(str(path), llava_processor, image_folder=str(images))
    assert not report, "headers only: a truncated file passes the up-front check"
    collator = collator_for(llava_processor, dataset=dataset)
    with caplog.at_level(logging.WARNING, logger="minillava.train.training.data"):
        batch = collator([dataset[0], dataset[1], dataset[2]])
    assert batch["input_ids"].shape[0] == 2 and (batch["labels"] != -100).any(dim=1).all()
    where = f"{path}:{record_line(path, 'sample-1')}"
    assert f"Skipping sample 'sample-1' ({where}): image {images / '1.png'} cannot be decoded" in caplog.text
    all_bad = collator([dataset[1]])
    assert all_bad["input_ids"].shape[0] == 1 and (all_bad["labels"] != -100).any(), (
        "a batch of bad samples only is replaced by a real sample drawn from the dataset"
    )
    assert [(s.id, s.source, s.kind) for s in collator.report.skipped] == [("sample-1", where, "unreadable image")]
    with pytest.raises(BadSampleError, match=r"Every sample of a batch failed to decode \('sample-1'.*no dataset"):
        collator_for(llava_processor)([dataset[1]])
    with pytest.raises(BadSampleError, match=rf"sample 'sample-1' \({where}\)"):
        collator_for(llava_processor, strict=True)([dataset[0], dataset[1]])


MASK_CASES = {
    "llava-1.5": (None, [" A red circle.</s>", " yes</s>"]),
    "llava-1.5-plain": ("plain", ["A red circle.\n", "yes\n"]),
    "minigpt4": (None, [" A red circle.###", " yes###"]),
}


@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_loss_mask_keeps_only_answers_and_their_end_token(tmp_path, built, case):
    template_name, answers = MASK_CASES[case]
    processor = built[case.removesuffix("-plain")][1]
    template = get_chat_template(template_name) if template_name else None
    records = [llava_record(0), llava_record(3, question="<image>\nIs it a circle? Answer yes or no, please.")]
    path, images = write_llava_dataset(tmp_path, records=records)
    dataset, _ = load_sft_dataset(str(path), processor, image_folder=str(images), chat_template=template)
    batch = collator_for(processor, template)([dataset[0], dataset[1]])
    input_ids, labels, attention = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (attention == 0).any(), "the two samples differ in length: padding is present"
    assert (labels[attention == 0] == -100).all()
    assert (labels[input_ids == processor.image_token_id] == -100).all()
    assert (input_ids == processor.image_token_id).sum() == 2 * processor.num_image_tokens
    kept = labels != -100
    assert torch.equal(labels[kept], input_ids[kept])
    decoded = [processor.tokenizer.decode(input_ids[i][kept[i]]) for i in range(2)]
    assert decoded == answers
    # every label before the answer (system prompt, question, image tokens) is masked
    for i in range(2):
        first_kept = int(kept[i].nonzero()[0])
        assert (labels[i, :first_kept] == -100).all()


def test_multi_turn_masks_every_user_turn(tmp_path, llava_processor):
    record = {
        "id": "chat",
        "image": "0.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A circle."},
            {"from": "human", "value": "Which colour?"},
            {"from": "gpt", "value": "red"},
        ],
    }
    path, images = write_llava_dataset(tmp_path, records=[record])
    dataset, _ = load_sft_dataset(str(path), llava_processor, image_folder=str(images))
    batch = collator_for(llava_processor)([dataset[0]])
    kept = batch["labels"][0] != -100
    assert llava_processor.tokenizer.decode(batch["input_ids"][0][kept]) == " A circle.</s> red</s>"
