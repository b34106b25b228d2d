"""Padding-free rows, packing and grouping: the loss and every gradient equal the padded batch's, bins are full and
reproducible, samplers keep modalities apart."""

import pytest
import torch
from sft_helpers import build_tiny_models
from tiny import make_image
from transformers import AutoModelForImageTextToText
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

import minillava.modeling  # noqa: F401
from minillava.processing import MiniLlavaProcessor
from minillava.train.training.packing import (
    ModalityLengthGroupedSampler,
    PackedBatchSampler,
    PaddingFreeCollator,
    best_fit_decreasing,
    padding_fraction,
)


def user(*parts):
    return {
        "role": "user",
        "content": [{"type": "image"} if p is None else {"type": "text", "text": p} for p in parts],
    }


def assistant(text):
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


# One image, two images, text only (two turns), one image with a long answer: the mix a pack must handle.
EXAMPLES = [
    {"messages": [user(None, "What is it?"), assistant("A red circle.")], "images": [make_image(1)]},
    {
        "messages": [user(None, None, "Which one is larger?"), assistant("The left one, by far.")],
        "images": [make_image(2), make_image(3, size=(20, 36))],
    },
    {
        "messages": [
            user("Tell me a story."),
            assistant("Once upon a time."),
            user("And then?"),
            assistant("They lived happily ever after, the end."),
        ],
        "images": [],
    },
    {
        "messages": [user(None, "Describe the image in detail."), assistant("A small green square " * 6)],
        "images": [make_image(4)],
    },
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


def model_and_collators(built, arch, max_length):
    folder, _ = built[arch]
    processor = MiniLlavaProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()  # no dropout
    padded = DataCollatorForVisionLanguageModeling(processor, max_length=None, assistant_only_loss=True)
    packed = PaddingFreeCollator(
        padded,
        image_token_id=processor.image_token_id,
        num_image_tokens=processor.num_image_tokens,
        pad_token_id=processor.tokenizer.pad_token_id,
        max_length=max_length,
    )
    return model, padded, packed


def loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
@pytest.mark.parametrize("max_length", [None, "two rows"])
def test_packed_loss_and_every_gradient_equal_the_padded_batch(built, arch, max_length):
    model, padded_collator, packed_collator = model_and_collators(built, arch, None)
    padded = padded_collator(EXAMPLES)
    lengths = padded["attention_mask"].sum(1).tolist()
    if max_length == "two rows":  # rows of at most the two longest samples: several rows, one with a pad segment
        packed_collator.max_length = sorted(lengths)[-1] + sorted(lengths)[-2]
    packed = packed_collator(EXAMPLES)
    assert "attention_mask" not in packed
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    assert (packed["position_ids"] == 0).sum() >= len(EXAMPLES)
    if max_length is None:
        assert packed["input_ids"].shape == (1, sum(lengths))
    else:
        assert packed["input_ids"].shape[0] > 1
    assert int((packed["labels"] != -100).sum()) == int((padded["labels"][:, 1:] != -100).sum())

    loss_padded, grads_padded = loss_and_grads(model, padded)
    loss_packed, grads_packed = loss_and_grads(model, packed)
    assert abs(loss_padded - loss_packed) <= 1e-5
    assert grads_padded.keys() == grads_packed.keys() and len(grads_padded) > 10
    worst = max((grads_padded[n] - grads_packed[n]).abs().max().item() for n in grads_padded)
    assert worst <= 1e-5, worst


def test_attention_crossing_a_sample_boundary_would_be_caught(built):
    """The same row with one position sequence for the whole row (attention across samples) moves the gradients
    far beyond the tolerance of the test above: that test would see a leak."""
    model, _, packed_collator = model_and_collators(built, "llava-1.5", None)
    packed = packed_collator(EXAMPLES)
    leaky = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    _, grads = loss_and_grads(model, packed)
    _, leaky_grads = loss_and_grads(model, leaky)
    assert max((grads[n] - leaky_grads[n]).abs().max().item() for n in grads) > 1e-3


def test_images_follow_their_sample_when_rows_reorder_samples(built):
    model, padded_collator, packed_collator = model_and_collators(built, "llava-1.5", None)
    padded = padded_collator(EXAMPLES)
    lengths = padded["attention_mask"].sum(1).tolist()
    packed_collator.max_length = max(lengths) + min(lengths)
    packed = packed_collator(EXAMPLES)
    with torch.no_grad():
        features = model.get_image_features(packed["pixel_values"]).pooler_output
        embeds = {}
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: embeds.update(x=kwargs["inputs_embeds"]), with_kwargs=True
        )
        model(**packed)
        hook.remove()
    image_positions = packed["input_ids"] == model.config.image_token_id
    torch.testing.assert_close(embeds["x"][image_positions], features.flatten(0, 1))
    # and the features of each image are those of the sample's own picture
    single = padded_collator([EXAMPLES[3]])["pixel_values"]
    assert any(torch.equal(single[0], image) for image in packed["pixel_values"])


def test_best_fit_decreasing_fills_bins_and_never_splits():
    lengths = torch.randint(5, 400, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    bins = best_fit_decreasing(lengths, 512, seed=1)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    assert len(bins) <= sum(lengths) / 512 * 1.05 + 1  # within 5% of the lower bound
    assert best_fit_decreasing(lengths, 512, seed=1) == bins
    assert best_fit_decreasing([600, 10], 512) == [[0], [1]]  # too long: a bin of its own, not split


def test_packed_batches_are_reproducible_per_epoch_and_cover_every_sample():
    lengths = torch.randint(5, 300, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    sampler = PackedBatchSampler(lengths, max_length=512, rows_per_batch=2, seed=3)
    first = list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(200))
    assert list(PackedBatchSampler(lengths, max_length=512, rows_per_batch=2, seed=3)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and len(list(sampler)) == len(sampler)


def test_modality_grouping_keeps_image_and_text_batches_apart_and_cuts_padding():
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 600, (256,), generator=generator).tolist()
    has_image = (torch.rand(256, generator=generator) < 0.7).tolist()
    sampler = ModalityLengthGroupedSampler(lengths, has_image, batch_size=8, megabatch_batches=8, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(256))
    batches = [order[i : i + 8] for i in range(0, 256, 8)]
    mixed = [b for b in batches if len({has_image[i] for i in b}) > 1]
    assert len(mixed) <= 1  # only where the two incomplete batches meet
    random_batches = [list(range(i, i + 8)) for i in range(0, 256, 8)]
    assert padding_fraction(lengths, batches) < 0.5 * padding_fraction(lengths, random_batches)
    sampler.set_epoch(1)
    assert list(sampler) != order


# `minillava sft` with each batching: a LLaVA JSON mixing one-image, two-image and text-only samples of varied length.


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    from sft_helpers import llava_record, write_llava_dataset

    records = []
    for index in range(12):
        if index % 4 == 3:
            record = llava_record(index, image=None, question="Tell me about circles. " * (1 + index % 3))
        elif index % 4 == 2:
            record = llava_record(index, question="<image>\n<image>\nCompare them.")
            record["image"] = [f"{index}.png", f"{index - 1}.png"]
        else:
            record = llava_record(index)
        record["conversations"][1]["value"] *= 1 + index % 5
        records.append(record)
    path, images = write_llava_dataset(tmp_path_factory.mktemp("mixed"), records=records)
    return ["--dataset_name", str(path), "--image_folder", str(images)]


def sft(built, arch, data, tmp_path, *flags):
    from sft_helpers import run_sft

    trainer, _ = run_sft(
        "tiny-cpu-instruct", *data, *flags, model_name_or_path=built[arch][0], output_dir=tmp_path, max_steps=3
    )
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


@pytest.mark.parametrize("arch", ["llava-1.5", "minigpt4"])
def test_sft_padding_free_logs_the_padded_runs_losses(built, mixed_data, tmp_path, arch):
    """Same seed, same samples in each step: the padding-free run's losses are the padded run's."""
    _, padded = sft(built, arch, mixed_data, tmp_path / "padded")
    trainer, padding_free = sft(built, arch, mixed_data, tmp_path / "free", "--padding_free", "true")
    assert len(padded) == len(padding_free) == 3
    assert max(abs(a - b) for a, b in zip(padded, padding_free, strict=True)) <= 1e-4, (padded, padding_free)
    batch = trainer.data_collator(
        [trainer.train_dataset[i] for i in range(4)]
    )  # what the model is given: no mask, restarting positions
    assert "attention_mask" not in batch and (batch["position_ids"] == 0).sum() >= 4
    card = (tmp_path / "free" / "README.md").read_text()
    assert "padding-free (sdpa attention)" in card


def test_sft_packing_fills_rows_and_trains(built, mixed_data, tmp_path):
    trainer, losses = sft(built, "llava-1.5", mixed_data, tmp_path, "--packing", "true", "--max_length", "400")
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    loader = trainer.get_train_dataloader()
    lengths = trainer.train_dataset["length"]
    batches = list(loader.batch_sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) > 2 for b in batches[:-1])  # two rows of up to 400 tokens hold more than two samples
    assert "packed: rows of 400 tokens" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    "flags", [["--group_by_modality_length", "true"], ["--train_sampling_strategy", "group_by_length"]]
)
def test_sft_grouped_sampling_runs_from_the_length_column(built, mixed_data, tmp_path, flags):
    trainer, losses = sft(built, "llava-1.5", mixed_data, tmp_path, *flags)
    assert len(losses) == 3
    assert min(trainer.train_dataset["length"]) > 0


def test_sft_refuses_packing_that_would_split_samples(built, mixed_data, tmp_path):
    with pytest.raises(ValueError, match="packs whole samples"):
        sft(built, "llava-1.5", mixed_data, tmp_path, "--packing", "true", "--packing_strategy", "wrapped")


def test_packed_run_resumes_on_the_same_batches(built, mixed_data, tmp_path):
    """Killed at step 4 and resumed: the same packed batches follow (across an epoch boundary), so the losses and
    weights are the uninterrupted run's."""
    from sft_helpers import run_sft
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt("killed at step 4")

    flags = ["--packing", "true", "--max_length", "300", "--per_device_train_batch_size", "1"]
    common = {"model_name_or_path": built["llava-1.5"][0], "max_steps": 8, "learning_rate": 1e-3}
    straight, _ = run_sft("tiny-cpu-instruct", *mixed_data, *flags, **common, output_dir=tmp_path / "straight")
    assert len(straight.get_train_dataloader()) < 8  # more than one epoch
    checkpointing = {"output_dir": tmp_path / "killed", "save_strategy": "steps", "save_steps": 4}
    with pytest.raises(KeyboardInterrupt):
        run_sft("tiny-cpu-instruct", *mixed_data, *flags, **common, **checkpointing, callbacks=[Crash()])
    resumed, _ = run_sft(
        "tiny-cpu-instruct", *mixed_data, *flags, **common, **checkpointing, resume_from_checkpoint="true"
    )

    def losses(trainer):
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert losses(resumed)[-4:] == pytest.approx(losses(straight)[-4:], rel=1e-5)
    expected = dict(straight.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        torch.testing.assert_close(param, expected[name], atol=1e-6, rtol=1e-5, msg=name)
