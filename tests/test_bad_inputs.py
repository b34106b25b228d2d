"""Bad inputs a long run meets: huge or extreme images, broken text encodings, images that fail when decoded during
training, paths outside --image_folder, duplicate ids. Each is skipped and named (or warned about), never fatal."""

import json
import logging
import os

import pytest
import torch
from datasets import Dataset
from PIL import Image
from sft_helpers import build_tiny_models, llava_record, record_line, run_sft, snapshot, write_llava_dataset
from tiny import make_image
from torch.utils.data import DataLoader
from transformers import AutoModelForImageTextToText
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from minillava.train.training.data import (
    MAX_ASPECT_RATIO,
    MAX_PADDED_PIXELS,
    MAX_REPLACEMENT_DRAWS,
    BadSampleError,
    DataCollatorWithSampleChecks,
    SkipReport,
    infer_format,
    load_image,
    load_sft_dataset,
    warn_duplicate_ids,
)
from minillava.train.training.recipes import resolve_recipe
from minillava.train.training.sft import make_parser


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="module")
def processor(built):
    return built["llava-1.5"][1]


def truncate(path):
    """Cuts an image file in half: its header reads, its pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def llava_messages(question="<image>\nWhat is in the image?", answer="A red circle."):
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


# Item 6: the padded size and the aspect ratio are bounded from the header, before decoding.


def test_images_too_large_once_padded_or_too_thin_are_refused_from_the_header(tmp_path, processor):
    records = [llava_record(i, image=f"{name}.png") for i, name in enumerate(["strip", "wide", "thin", "edge"])]
    path, images = write_llava_dataset(tmp_path, records=[*records, llava_record(4)])
    Image.new("RGB", (60000, 2)).save(images / "strip.png")  # 120k pixels, 10 GiB once padded to a square
    Image.new("1", (12000, 1000)).save(images / "wide.png")  # aspect 12:1, 144M pixels padded
    Image.new("RGB", (1200, 4)).save(images / "thin.png")  # 4.8k pixels, 300:1
    Image.new("RGB", (MAX_ASPECT_RATIO * 10, 10)).save(images / "edge.png")  # 50:1 is allowed
    assert (images / "strip.png").stat().st_size < 100_000, "tiny on disk"

    dataset, report = load_sft_dataset(str(path), processor, image_folder=str(images))
    assert [row["id"] for row in dataset] == ["sample-3", "sample-4"]
    skipped = {sample.id: sample for sample in report.skipped}
    assert sorted(skipped) == ["sample-0", "sample-1", "sample-2"]
    assert {sample.kind for sample in skipped.values()} == {"image size"}
    strip = str(skipped["sample-0"])
    assert strip.startswith(f"sample 'sample-0' ({path}:{record_line(path, 'sample-0')}): image ")
    assert f"{images / 'strip.png'} is 60000x2" in strip and "60000x60000 = 3,600,000,000 pixels" in strip
    assert f"the limit is {MAX_PADDED_PIXELS:,}" in strip and "aspect ratio 30000:1 exceeds 50:1" in strip
    assert "12000x12000" in str(skipped["sample-1"]) and "aspect" not in str(skipped["sample-1"])
    assert "300:1 exceeds 50:1" in str(skipped["sample-2"]) and "padded" not in str(skipped["sample-2"])
    with pytest.raises(BadSampleError, match=r"sample 'sample-0' \(.*\): image .*strip.png is 60000x2"):
        load_sft_dataset(str(path), processor, image_folder=str(images), strict=True)
    # at decode time too (an image replaced after the check, the feature cache): refused before decoding
    with pytest.raises(BadSampleError, match="is 60000x2: padded to a square"):
        load_image({"bytes": None, "path": str(images / "strip.png")})


# Item 7: byte order marks, invalid UTF-8, lone surrogates, a bad first record.


def test_utf8_byte_order_mark_is_accepted(tmp_path, processor):
    make_image(0).save(tmp_path / "0.png")
    json_path, jsonl_path = tmp_path / "data.json", tmp_path / "data.jsonl"
    json_path.write_text(json.dumps([llava_record(0), llava_record(0) | {"id": "b"}], indent=1), encoding="utf-8-sig")
    lines = [json.dumps({"id": str(i), "messages": llava_messages(), "images": ["0.png"]}) for i in range(2)]
    jsonl_path.write_text("\n".join(lines), encoding="utf-8-sig")
    assert json_path.read_bytes().startswith(b"\xef\xbb\xbf") and jsonl_path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert infer_format(str(json_path)) == "llava" and infer_format(str(jsonl_path)) == "messages"
    for path in (json_path, jsonl_path):
        dataset, report = load_sft_dataset(str(path), processor)
        assert not report and len(dataset) == 2


def test_invalid_utf8_skips_the_record_it_is_in_and_names_file_and_line(tmp_path, processor):
    make_image(0).save(tmp_path / "0.png")
    good = [json.dumps({"id": f"good-{i}", "messages": llava_messages(), "images": ["0.png"]}) for i in range(2)]
    in_string = json.dumps({"id": "bad-byte", "messages": llava_messages("Hi", "A cafe.")}).encode()
    in_string = in_string.replace(b"cafe", b"caf\xff")  # Latin-1, not UTF-8, inside a string
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_bytes(b"\n".join([good[0].encode(), in_string, b"\xff\xfe{", good[1].encode()]) + b"\n")
    dataset, report = load_sft_dataset(str(jsonl), processor)
    assert [row["id"] for row in dataset] == ["good-0", "good-1"]
    assert [(s.id, s.source) for s in report.skipped] == [("bad-byte", f"{jsonl}:2"), ("2", f"{jsonl}:3")]
    assert "text is not valid Unicode: invalid UTF-8 byte 0xff" in report.skipped[0].reason
    assert "of messages[1].content" in report.skipped[0].reason and "invalid JSON" in report.skipped[1].reason

    # a JSON array: the record holding the byte is skipped; a byte outside any string names the file and line
    array = tmp_path / "data.json"
    records = [llava_record(0), llava_record(0) | {"id": "bad-byte"}, llava_record(0) | {"id": "last"}]
    array.write_text(json.dumps(records, indent=1))
    line = record_line(array, "sample-0")
    array.write_bytes(array.read_bytes().replace(b"A red circle.", b"A red circle\xff", 1))
    dataset, report = load_sft_dataset(str(array), processor)
    assert [row["id"] for row in dataset] == ["bad-byte", "last"]
    (skipped,) = report.skipped
    assert skipped.id == "sample-0" and skipped.source == f"{array}:{line}"
    assert skipped.reason == (
        "text is not valid Unicode: invalid UTF-8 byte 0xff (or a lone surrogate \\udcff) at character 12 of "
        "conversations[1].value"
    )
    broken = tmp_path / "broken.json"
    broken.write_bytes(b'[\n {"id": "a"},\n \xff\n]')
    with pytest.raises(ValueError, match=rf"{broken}:3: invalid JSON"):
        load_sft_dataset(str(broken), processor, dataset_format="llava")


def test_lone_surrogate_skips_the_sample_before_it_reaches_the_tokenizer(tmp_path, processor):
    records = [llava_record(0), llava_record(1), llava_record(2)]
    path, images = write_llava_dataset(tmp_path, records=records)
    text = path.read_text().replace("What is in the image?", "What \\ud800is in the image?", 1)
    text = text.replace('"sample-2"', '"sample-\\udfff"')  # an id that is not valid Unicode either
    path.write_text(text)
    dataset, report = load_sft_dataset(str(path), processor, image_folder=str(images))
    assert [row["id"] for row in dataset] == ["sample-1"]
    first, last = report.skipped
    assert first.id == "sample-0" and first.source == f"{path}:{record_line(path, 'sample-0')}"
    assert (
        first.reason == "text is not valid Unicode: lone surrogate \\ud800 at character 13 of conversations[0].value"
    )
    assert last.id == "sample-\\udfff" and "lone surrogate \\udfff at character 7 of id" in last.reason
    report.save(tmp_path / "skipped.json")  # the report itself is valid UTF-8
    with pytest.raises(BadSampleError, match=r"sample 'sample-0' .*lone surrogate"):
        load_sft_dataset(str(path), processor, image_folder=str(images), strict=True)


def test_a_bad_first_record_does_not_decide_the_format(tmp_path, processor):
    make_image(0).save(tmp_path / "0.png")
    jsonl = tmp_path / "data.jsonl"
    lines = [json.dumps({"id": str(i), "messages": llava_messages(), "images": ["0.png"]}) for i in range(3)]
    jsonl.write_text("\n".join(["{not json", '{"id": "odd"}', *lines]) + "\n")
    assert infer_format(str(jsonl)) == "messages"
    dataset, report = load_sft_dataset(str(jsonl), processor)
    assert len(dataset) == 3 and [s.source for s in report.skipped] == [f"{jsonl}:1", f"{jsonl}:2"]

    array, _ = write_llava_dataset(tmp_path, records=[{"id": "odd", "turns": []}, llava_record(0), llava_record(1)])
    assert infer_format(str(array)) == "llava"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"id": "a"}, {"id": "b"}]))
    with pytest.raises(ValueError, match=r"Cannot tell the format of .*unknown.json.*--dataset_format"):
        infer_format(str(unknown))


# Items 8 and 9: samples that fail to decode during training reach skipped_samples.json and the model card; a batch
# whose every sample fails is replaced by real samples.


def test_decode_failures_during_training_are_reported_and_never_stop_the_run(built, tmp_path):
    records = [llava_record(i) for i in range(6)] + [llava_record(6, image="../outside.png")]
    path, images = write_llava_dataset(tmp_path / "data", records=records)
    make_image(6).save(tmp_path / "data" / "outside.png")
    for i in (0, 1, 4, 5):  # batches 1 and 3 of the sequential sampler fail entirely
        truncate(images / f"{i}.png")
    out = tmp_path / "out"
    trainer, _ = run_sft(
        "tiny-cpu-align",
        dataset_name=path,
        image_folder=images,
        model_name_or_path=built["llava-1.5"][0],
        output_dir=out,
        max_steps=3,
        train_sampling_strategy="sequential",
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(loss > 0 for loss in losses), "every step learns from real samples"
    before = snapshot(AutoModelForImageTextToText.from_pretrained(built["llava-1.5"][0]))
    after = snapshot(AutoModelForImageTextToText.from_pretrained(out))
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(name.startswith("model.multi_modal_projector.") for name in moved), "the connector trained"
    skipped = json.loads((out / "skipped_samples.json").read_text())
    assert skipped["total"] == 7
    by_id = {sample["id"]: sample for sample in skipped["skipped"]}
    assert sorted(by_id) == ["sample-0", "sample-1", "sample-4", "sample-5", "sample-6"]
    assert by_id["sample-0"]["kind"] == "unreadable image" and "cannot be decoded" in by_id["sample-0"]["reason"]
    assert by_id["sample-0"]["source"] == f"{path}:{record_line(path, 'sample-0')}"
    assert by_id["sample-6"]["kind"] == "image outside folder"
    assert trainer.run_info["num_skipped"] == 5
    assert "skipped: 5" in (out / "README.md").read_text()
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")], "written atomically, nothing left over"


def collator_over(processor, dataset, report_path=None, strict=False):
    return DataCollatorWithSampleChecks(
        DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True),
        strict=strict,
        report=SkipReport(total=len(dataset)),
        report_path=report_path,
        dataset=dataset,
    )


def test_skips_in_data_loader_workers_reach_the_report_file(tmp_path, processor):
    path, images = write_llava_dataset(tmp_path, num_samples=6)
    for i in (1, 4):
        truncate(images / f"{i}.png")
    dataset, _ = load_sft_dataset(str(path), processor, image_folder=str(images))
    report_path = tmp_path / "out" / "skipped_samples.json"
    collator = collator_over(processor, dataset, report_path)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collator)
    batches = list(loader)
    assert sum(batch["input_ids"].shape[0] for batch in batches) == 4
    assert not collator.report.skipped, "the workers' copies of the report, not the main process's, saw the skips"
    in_file = SkipReport.load(report_path)
    assert sorted(sample.id for sample in in_file.skipped) == ["sample-1", "sample-4"]
    assert sorted(sample.id for sample in collator.skip_report().skipped) == ["sample-1", "sample-4"]


def test_an_all_bad_batch_draws_real_samples_and_strict_raises(tmp_path, processor, caplog):
    path, images = write_llava_dataset(tmp_path, num_samples=4)
    for i in (0, 1):
        truncate(images / f"{i}.png")
    dataset, _ = load_sft_dataset(str(path), processor, image_folder=str(images))
    collator = collator_over(processor, dataset)
    with caplog.at_level(logging.WARNING, logger="minillava.train.training.data"):
        batch = collator([dataset[0], dataset[1]])
    assert (batch["labels"] != -100).any(dim=1).all(), "every row is a real sample with labels"
    texts = processor.tokenizer.batch_decode(batch["input_ids"])
    assert all(("Two blue triangles." in text) or ("yes" in text) for text in texts), "samples 2 and 3 only"
    assert {sample.id for sample in collator.report.skipped} == {"sample-0", "sample-1"}
    assert "replaced by samples drawn at random" in caplog.text
    with pytest.raises(BadSampleError, match=r"sample 'sample-0'"):
        collator_over(processor, dataset, strict=True)([dataset[0], dataset[1]])
    everything_bad = dataset.select([0, 1])
    with pytest.raises(BadSampleError, match=rf"and so did the {MAX_REPLACEMENT_DRAWS} samples drawn to replace"):
        collator_over(processor, everything_bad)([everything_bad[0]])


# Item 10: image paths outside --image_folder.


def test_image_paths_outside_the_image_folder_are_refused_unless_allowed(tmp_path, processor):
    images = tmp_path / "images"
    path, _ = write_llava_dataset(tmp_path, records=[llava_record(0), llava_record(1)])
    make_image(2).save(tmp_path / "outside.png")
    (tmp_path / "elsewhere").mkdir()
    make_image(3).save(tmp_path / "elsewhere" / "3.png")
    (images / "sub").mkdir()
    (images / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    records = [
        llava_record(0),
        llava_record(1, image="sub/../1.png"),
        llava_record(2, image="../outside.png"),
        llava_record(3, image=str(tmp_path / "outside.png")),
        llava_record(4, image="linked/3.png"),  # a symlinked folder inside: the dataset's own layout
    ]
    path.write_text(json.dumps(records, indent=1))
    dataset, report = load_sft_dataset(str(path), processor, image_folder=str(images))
    assert [row["id"] for row in dataset] == ["sample-0", "sample-1", "sample-4"]
    assert [(s.id, s.kind) for s in report.skipped] == [
        ("sample-2", "image outside folder"),
        ("sample-3", "image outside folder"),
    ]
    assert report.skipped[0].reason == (
        f"image path ../outside.png lies outside --image_folder {images}; pass --allow_images_outside_folder if the "
        "dataset means it"
    )
    allowed, report = load_sft_dataset(
        str(path), processor, image_folder=str(images), allow_images_outside_folder=True
    )
    assert len(allowed) == 5 and not report
    messages = tmp_path / "messages.jsonl"
    lines = [{"id": "m", "messages": llava_messages(), "images": [image]} for image in ("../outside.png", "0.png")]
    messages.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    _, report = load_sft_dataset(str(messages), processor, image_folder=str(images), max_length=None)
    assert [(s.id, s.kind) for s in report.skipped] == [("m", "image outside folder")]
    for flags, expected in (([], False), (["--allow_images_outside_folder"], True)):
        argv = ["--config", resolve_recipe("tiny-cpu-align"), "--output_dir", str(tmp_path / "o"), *flags]
        script_args, *_ = make_parser().parse_args_and_config(argv)
        assert script_args.allow_images_outside_folder is expected


# Item 11: duplicate ids.


def test_duplicate_ids_are_warned_about_with_both_sources(tmp_path, processor, caplog):
    records = [llava_record(0), llava_record(1), llava_record(2) | {"id": "sample-0"}]
    path, images = write_llava_dataset(tmp_path, records=records)
    with caplog.at_level(logging.WARNING, logger="minillava.train.training.data"):
        dataset, report = load_sft_dataset(str(path), processor, image_folder=str(images))
    assert len(dataset) == 3 and not report, "a warning, not a skip"
    starts = [i for i, line in enumerate(path.read_text().splitlines(), start=1) if line == " {"]
    assert "1 sample id(s) are used more than once" in caplog.text
    assert f"'sample-0' at {path}:{starts[0]}, {path}:{starts[2]}" in caplog.text
    assert "sample-1" not in caplog.text

    many = Dataset.from_dict({"id": [f"id-{i % 60}" for i in range(120)], "source": [f"row {i}" for i in range(120)]})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="minillava.train.training.data"):
        duplicates = warn_duplicate_ids(many)
    assert len(duplicates) == 60 and duplicates["id-7"] == ["row 7", "row 67"]
    assert "60 sample id(s) are used more than once" in caplog.text and "... and 10 more" in caplog.text
    assert len(caplog.records) == 1, "one summarised warning"
