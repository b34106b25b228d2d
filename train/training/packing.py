"""Batches that waste no compute on padding: padding-free multimodal rows, best-fit-decreasing packing, and LLaVA's
grouping of samples by modality and length.

- [`PaddingFreeCollator`] turns the padded batch of TRL's vision collator into rows of whole samples laid end to end:
  position ids restart at each sample, so transformers' attention never crosses a sample boundary (the flash-attention
  varlen kernels through `cu_seq_lens_*`, SDPA and eager through the block-diagonal mask transformers builds from the
  restarting position ids), the first label of each sample is masked, and each sample's images stay with it.
- [`PackedBatchSampler`] fills rows of `max_length` tokens from the whole dataset (best-fit decreasing on the
  precomputed sample lengths, seeded), `per_device_train_batch_size` rows a batch.
- [`ModalityLengthGroupedSampler`] is LLaVA's `group_by_modality_length`: image and text-only samples in separate
  batches, similar lengths together (sorted within megabatches, as transformers' `LengthGroupedSampler`), the batches
  shuffled.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler


# The batch keys that hold one entry per image (the pixels, or the cached features of `feature_cache`).
IMAGE_KEYS = ("pixel_values", "vision_features")


def best_fit_decreasing(lengths: Sequence[int], capacity: int, seed: int | None = None) -> list[list[int]]:
    """Packs items (by index) into bins holding at most `capacity` tokens: longest first, each into the fullest bin
    it fits. Items of equal length are taken in a seeded random order (`seed=None`: by index). An item longer than
    `capacity` gets a bin of its own; no item is ever split."""
    order = list(range(len(lengths)))
    if seed is not None:
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    order.sort(key=lambda index: -lengths[index])  # stable: ties keep the seeded order
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin) for the bins that can still take an item, sorted
    for index in order:
        length = lengths[index]
        position = bisect.bisect_left(free, (length, -1))
        if position < len(free):
            space, bin_index = free.pop(position)
        else:
            space, bin_index = capacity, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        if space - length > 0:
            bisect.insort(free, (space - length, bin_index))
    return bins


class PackedBatchSampler(Sampler[list[int]]):
    """Batches of `rows_per_batch` bins of at most `max_length` tokens (see [`best_fit_decreasing`]).

    The bins are made once, from `seed`; their order is shuffled at every epoch from `seed` and the epoch, so a run
    resumed from a checkpoint sees the same batches as the uninterrupted one.
    """

    def __init__(
        self, lengths: Sequence[int], max_length: int, rows_per_batch: int, seed: int = 0, drop_last: bool = False
    ):
        self.bins = best_fit_decreasing(lengths, max_length, seed)
        self.rows_per_batch = rows_per_batch
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.bins) // self.rows_per_batch
        return math.ceil(len(self.bins) / self.rows_per_batch)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.bins), generator=generator).tolist()
        for batch in range(len(self)):
            rows = order[batch * self.rows_per_batch : (batch + 1) * self.rows_per_batch]
            yield [index for row in rows for index in self.bins[row]]


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's `group_by_modality_length`: image and text-only samples are never in one batch of `batch_size`, and
    the samples of a batch have similar lengths.

    Each modality is shuffled and cut into megabatches of `megabatch_batches` batches; each megabatch is sorted by
    length (longest first) and cut into batches; the batches of both modalities are shuffled together, the two
    incomplete ones last. Seeded from `seed` and the epoch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        has_image: Sequence[bool],
        batch_size: int,
        megabatch_batches: int = 50,
        seed: int = 0,
    ):
        if len(lengths) != len(has_image):
            raise ValueError(f"{len(lengths)} lengths for {len(has_image)} samples")
        self.lengths = list(lengths)
        self.has_image = list(has_image)
        self.batch_size = batch_size
        self.megabatch_batches = megabatch_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        megabatch_size = self.batch_size * self.megabatch_batches
        complete, incomplete = [], []
        for modality in (True, False):
            indices = [i for i, has_image in enumerate(self.has_image) if bool(has_image) is modality]
            shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
            for start in range(0, len(shuffled), megabatch_size):
                megabatch = sorted(shuffled[start : start + megabatch_size], key=lambda i: -self.lengths[i])
                for first in range(0, len(megabatch), self.batch_size):
                    batch = megabatch[first : first + self.batch_size]
                    (complete if len(batch) == self.batch_size else incomplete).append(batch)
        order = torch.randperm(len(complete), generator=generator).tolist()
        for batch in [complete[i] for i in order] + incomplete:
            yield from batch


@dataclass
class PaddingFreeCollator:
    """Lays the samples of a batch end to end in rows without padding, from the padded batch of `collator` (TRL's
    `DataCollatorForVisionLanguageModeling`).

    With `max_length`, samples go into rows of at most that many tokens (best-fit decreasing; rows shorter than the
    longest are completed by a separate pad segment that nothing attends to and that has no loss); without it (and
    for flash attention, whose varlen kernels take one row with `cu_seq_lens_*`), all in one row. The loss equals the
    padded batch's: every label is kept except the first of each sample, which the previous sample's last token would
    otherwise be trained to predict.

    Args:
        collator: the padding collator (its batch has `input_ids`, `attention_mask`, `labels`, and `pixel_values` or
            cached `vision_features`).
        image_token_id, num_image_tokens: the image placeholder and how many of them each image fills.
        pad_token_id: the id the last row's pad segment is filled with (never attended to, never in the loss).
        max_length: the tokens of a row; None for a single row.
        flash_attention: add `cu_seq_lens_q/k` and `max_length_q/k` for transformers' flash-attention kernels.
    """

    collator: Callable[[list[dict]], dict]
    image_token_id: int
    num_image_tokens: int
    pad_token_id: int
    max_length: int | None = None
    flash_attention: bool = False

    def __call__(self, examples: list[dict]) -> dict:
        padded = self.collator(examples)
        unknown = set(padded) - {"input_ids", "attention_mask", "labels", *IMAGE_KEYS}
        if unknown:
            raise ValueError(f"PaddingFreeCollator cannot lay out the batch keys {sorted(unknown)}")
        keep = padded["attention_mask"].bool()
        ids = [padded["input_ids"][i][keep[i]] for i in range(len(keep))]
        labels = [padded["labels"][i][keep[i]] for i in range(len(keep))]
        lengths = [len(sample) for sample in ids]
        one_row = self.flash_attention or self.max_length is None
        rows = [list(range(len(ids)))] if one_row else best_fit_decreasing(lengths, self.max_length)
        width = max(sum(lengths[i] for i in row) for row in rows)

        batch_ids = torch.full((len(rows), width), self.pad_token_id, dtype=padded["input_ids"].dtype)
        batch_labels = torch.full((len(rows), width), -100, dtype=padded["labels"].dtype)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                end = start + lengths[i]
                batch_ids[r, start:end] = ids[i]
                batch_labels[r, start:end] = labels[i]
                position_ids[r, start:end] = torch.arange(lengths[i])
                start = end
            position_ids[r, start:] = torch.arange(width - start)  # the pad segment, a sequence of its own
        batch_labels[position_ids == 0] = -100
        batch = {"input_ids": batch_ids, "labels": batch_labels, "position_ids": position_ids}

        images = [int((sample == self.image_token_id).sum()) // self.num_image_tokens for sample in ids]
        first = [0, *torch.tensor(images).cumsum(0).tolist()]
        order = [image for row in rows for i in row for image in range(first[i], first[i + 1])]
        for key in IMAGE_KEYS:
            if key in padded:
                batch[key] = padded[key][order]
        if self.flash_attention:
            starts = (position_ids[0] == 0).nonzero().flatten()
            cu_seq_lens = torch.cat([starts, torch.tensor([width])]).to(torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
            batch["max_length_q"] = batch["max_length_k"] = int(cu_seq_lens.diff().max())
        return batch


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of pad tokens when each batch is padded to its longest sample."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches if batch)
    return 1 - real / total if total else 0.0


__all__ = [
    "ModalityLengthGroupedSampler",
    "PackedBatchSampler",
    "PaddingFreeCollator",
    "best_fit_decreasing",
    "padding_fraction",
]
