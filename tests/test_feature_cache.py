"""`--cache_image_features`: the loss and weights of a cached run equal the uncached run's, a later run skips the
vision front end, a stale cache is never read, and a trainable front end is refused."""

import pytest
import torch
from sft_helpers import build_tiny_models, run_sft, write_llava_dataset
from transformers import AutoModelForImageTextToText, TrainerCallback

import minillava.modeling  # noqa: F401
from minillava.processing import MiniLlavaProcessor
from minillava.train.training.feature_cache import ImageFeatureCache, model_fingerprint


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("built"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path, images = write_llava_dataset(tmp_path_factory.mktemp("data"), num_samples=8)
    return ["--dataset_name", str(path), "--image_folder", str(images)]


class TowerCalls(TrainerCallback):
    """Counts the vision tower's forward calls during training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.calls = 0
        self.hook = base.model.vision_tower.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.remove()


def train(built, arch, data, out, recipe, *flags):
    calls = TowerCalls()
    trainer, _ = run_sft(recipe, *data, *flags, callbacks=[calls], model_name_or_path=built[arch][0], output_dir=out)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses, calls.calls


@pytest.mark.parametrize(
    ("arch", "recipe", "flags"),
    [
        ("minigpt4", "tiny-cpu-align", []),
        ("minigpt4", "tiny-cpu-instruct", []),
        ("llava-1.5", "tiny-cpu-align", []),
        ("llava-1.5", "tiny-cpu-instruct", ["--padding_free", "true"]),
    ],
)
def test_cached_run_equals_uncached_and_a_second_run_skips_the_tower(built, data, tmp_path, arch, recipe, flags):
    _, plain, plain_calls = train(built, arch, data, tmp_path / "plain", recipe, *flags)
    cache = [*flags, "--cache_image_features", str(tmp_path / "cache")]
    first, cached, first_calls = train(built, arch, data, tmp_path / "cached", recipe, *cache)
    second, again, second_calls = train(built, arch, data, tmp_path / "again", recipe, *cache)

    assert plain_calls > 0 and first_calls == second_calls == 0  # features computed before training, then read
    assert first.run_info["feature_cache"]["computed"] == 8
    assert second.run_info["feature_cache"]["computed"] == 0 and second.run_info["feature_cache"]["images"] == 8
    assert max(abs(a - b) for a, b in zip(plain, cached, strict=True)) <= 1e-6, (plain, cached)
    assert cached == again
    reference = AutoModelForImageTextToText.from_pretrained(tmp_path / "plain")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "cached")
    reference_params = dict(reference.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, reference_params[name], rtol=0, atol=1e-6)


def test_another_model_or_preprocessing_never_reads_the_cache(built, tmp_path):
    folder, _ = built["llava-1.5"]
    processor = MiniLlavaProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    fingerprint = model_fingerprint(model, processor.image_processor)
    cache = ImageFeatureCache(tmp_path, fingerprint)
    cache.add(["a"], torch.ones(1, 2, 3))
    assert "a" in ImageFeatureCache(tmp_path, fingerprint)

    with torch.no_grad():
        next(model.model.vision_tower.parameters()).add_(1e-3)  # another revision of the tower
    assert model_fingerprint(model, processor.image_processor) != fingerprint
    processor.image_processor.image_mean = [0.5, 0.5, 0.5]  # other preprocessing
    other = model_fingerprint(AutoModelForImageTextToText.from_pretrained(folder), processor.image_processor)
    assert other != fingerprint
    assert "a" not in ImageFeatureCache(tmp_path, other)
    # the language model does not change the features: its weights are not in the key
    with torch.no_grad():
        model = AutoModelForImageTextToText.from_pretrained(folder)
        next(model.model.language_model.parameters()).add_(1.0)
    assert model_fingerprint(model, MiniLlavaProcessor.from_pretrained(folder).image_processor) == fingerprint


def test_a_trainable_tower_is_refused(built, data, tmp_path):
    with pytest.raises(ValueError, match="frozen vision tower"):
        train(
            built,
            "llava-1.5",
            data,
            tmp_path,
            "tiny-cpu-instruct",
            "--tune_vision_tower",
            "true",
            "--cache_image_features",
            str(tmp_path / "cache"),
        )


def test_the_disk_cost_is_said_and_a_full_disk_refused(built, data, tmp_path, monkeypatch, caplog):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(OSError, match=r"No space left on .*cache.*need .* KB, 100\.0 B free"):
        train(
            built,
            "llava-1.5",
            data,
            tmp_path / "out",
            "tiny-cpu-align",
            "--cache_image_features",
            str(tmp_path / "cache"),
        )
    monkeypatch.undo()
    train(
        built, "llava-1.5", data, tmp_path / "out", "tiny-cpu-align", "--cache_image_features", str(tmp_path / "cache")
    )
    assert "8 of 8 images to compute" in caplog.text and "on disk" in caplog.text
