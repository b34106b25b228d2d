"""Model behaviour of both architectures on tiny random configs (CPU, fp32)."""

import pytest
import torch
from tiny import image_prompt_ids, tiny_llava, tiny_minigpt4
from transformers import AutoModelForImageTextToText


ARCHS = {
    "llava-clip-llama": lambda: tiny_llava(vision="clip", text="llama"),
    "llava-siglip-qwen2": lambda: tiny_llava(vision="siglip", text="qwen2"),
    "minigpt4": lambda: tiny_minigpt4(),
}


@pytest.fixture(params=sorted(ARCHS))
def model_and_tokenizer(request):
    return ARCHS[request.param]()


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_forward_shapes_and_image_features(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["USER: <image>\nWhat is it? ASSISTANT:"]))
    out = model(input_ids=ids, pixel_values=pixels(1))
    assert out.logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    assert out.image_hidden_states.shape == (1, model.config.image_seq_length, model.config.text_config.hidden_size)
    assert torch.isfinite(out.logits).all()


def test_labels_at_image_positions_are_ignored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\na red circle"]))
    masked = ids.masked_fill(ids == model.config.image_token_id, -100)
    loss_raw = model(input_ids=ids, pixel_values=pixels(1), labels=ids).loss
    loss_masked = model(input_ids=ids, pixel_values=pixels(1), labels=masked).loss
    torch.testing.assert_close(loss_raw, loss_masked)


@pytest.mark.parametrize("delta", [-1, +1])
def test_token_feature_mismatch_error_names_both_counts(model_and_tokenizer, delta):
    model, tokenizer = model_and_tokenizer
    n = model.config.image_seq_length
    ids = torch.tensor([[tokenizer.bos_token_id] + [model.config.image_token_id] * (n + delta) + [5, 6]])
    with pytest.raises(ValueError, match=rf"{n + delta} image tokens but 1 image\(s\) give {n} features.*truncation"):
        model(input_ids=ids, pixel_values=pixels(1))


def test_image_tokens_without_pixels_train_error_infer_as_text(model_and_tokenizer):
    """A loss over a sample whose image was lost raises; inference embeds image tokens as text, as llava does."""
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\nhi"]))
    with pytest.raises(ValueError, match="no `pixel_values`"):
        model(input_ids=ids, labels=ids)
    with torch.no_grad():
        as_text = model(input_ids=ids).logits
        embeds = model.get_input_embeddings()(ids)
        torch.testing.assert_close(model(inputs_embeds=embeds).logits, as_text)


def test_each_placeholder_takes_its_own_image(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image> left <image> right"]))
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        features = model.get_image_features(pixels(2)).pooler_output
        model(input_ids=ids, pixel_values=pixels(2))
    hook.remove()
    positions = (ids[0] == model.config.image_token_id).nonzero().squeeze(-1)
    n = model.config.image_seq_length
    torch.testing.assert_close(seen["embeds"][0, positions[:n]], features[0])
    torch.testing.assert_close(seen["embeds"][0, positions[n:]], features[1])


def test_text_only_prompt(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer("hello there", add_special_tokens=False).input_ids])
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_generate_with_cache_equals_without(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["USER: <image>\nWhat is it? ASSISTANT:"]))
    kwargs = {"input_ids": ids, "pixel_values": pixels(1), "max_new_tokens": 6, "do_sample": False}
    torch.testing.assert_close(model.generate(**kwargs, use_cache=True), model.generate(**kwargs, use_cache=False))


def test_batched_left_padded_generation_equals_one_at_a_time(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = image_prompt_ids(tokenizer, model, ["<image>\nWhat colour?", "<image>\nHow many shapes are in it?"])
    images = pixels(2)
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    batch = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batched = model.generate(
        input_ids=batch, attention_mask=mask, pixel_values=images, max_new_tokens=5, do_sample=False, pad_token_id=pad
    )
    for i, prompt in enumerate(prompts):
        single = model.generate(
            input_ids=torch.tensor([prompt]), pixel_values=images[i : i + 1], max_new_tokens=5, do_sample=False
        )
        assert batched[i, width:].tolist() == single[0, len(prompt) :].tolist()


def test_frozen_vision_tower_keeps_no_activations(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    outputs = []
    hook = model.model.vision_tower.register_forward_hook(lambda m, i, o: outputs.append(o.last_hidden_state))
    model.model.vision_tower.requires_grad_(False)
    model.get_image_features(pixels(1))
    model.model.vision_tower.requires_grad_(True)
    model.get_image_features(pixels(1))
    hook.remove()
    assert outputs[0].grad_fn is None and not outputs[0].requires_grad
    assert outputs[1].requires_grad


def test_frozen_front_end_stays_in_eval_mode_whoever_calls_train(model_and_tokenizer):
    """A frozen tower (and Q-Former) runs without dropout under any trainer (plain `trl sft` included), as MiniGPT-4
    keeps it; once it trains again it follows `train()`."""
    model, tokenizer = model_and_tokenizer
    front_end = [getattr(model.model, name) for name in model.model.vision_feature_modules]
    front_end = [module for module in front_end if isinstance(module, torch.nn.Module)]
    for module in front_end:
        module.requires_grad_(False)
    model.train()
    assert model.training and model.model.language_model.training
    assert not any(module.training for module in front_end)
    for module in front_end:
        module.requires_grad_(True)
    model.train()
    assert all(module.training for module in front_end)
    model.eval()
    assert not any(module.training for module in front_end)


def test_gradient_checkpointing_with_frozen_tower_trains_connector_and_lm(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    model.model.vision_tower.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\na red circle"]))
    model(input_ids=ids, pixel_values=pixels(1), labels=ids).loss.backward()
    connector = "multi_modal_projector" if hasattr(model.model, "multi_modal_projector") else "language_projection"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for n, p in trainable.items() if connector in n or "language_model" in n)
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_sdpa_is_the_default_attention(model_and_tokenizer):
    model, _ = model_and_tokenizer
    assert model.model.language_model.config._attn_implementation == "sdpa"


def test_save_and_reload_gives_identical_logits_and_every_weight(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\nWhat is it?"]))
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    reloaded, info = AutoModelForImageTextToText.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is type(model)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels(1)).logits
        torch.testing.assert_close(reloaded.eval()(input_ids=ids, pixel_values=pixels(1)).logits, expected)


@pytest.mark.parametrize("layer", [-1, [-1, -2]])
def test_vision_feature_layers(layer):
    model, tokenizer = tiny_llava(vision_feature_layer=layer)
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\nhi"]))
    assert model(input_ids=ids, pixel_values=pixels(1)).logits.shape[1] == ids.shape[1]


@pytest.mark.parametrize("vision", ["clip", "siglip"])
@pytest.mark.parametrize("layer", [-2, -3, [-3, -2], 1, -1])
def test_vision_tower_runs_only_the_layers_it_needs(vision, layer):
    """Features equal the full tower's hidden state(s); the layers after the last one used never run, and with a
    single layer of CLIP no hidden state is kept."""
    model, _ = tiny_llava(vision=vision, vision_feature_layer=layer)
    tower = model.model.vision_tower
    layers = next(
        module.layers for module in tower.modules() if isinstance(getattr(module, "layers", None), torch.nn.ModuleList)
    )
    calls = [0] * len(layers)
    hooks = [
        layer_.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, layer_ in enumerate(layers)
    ]
    with torch.no_grad():
        features = model.model.get_vision_features(pixels(2)).pooler_output
        full = tower(pixels(2), output_hidden_states=True).hidden_states  # called alone: the whole tower, as published
    for hook in hooks:
        hook.remove()
    wanted = [layer] if isinstance(layer, int) else layer
    expected = torch.cat([full[index] for index in wanted], dim=-1)
    if model.config.vision_feature_select_strategy == "default":
        expected = expected[:, 1:]
    torch.testing.assert_close(features, expected, rtol=0, atol=0)
    last_needed = max(1, *(index if index >= 0 else len(layers) + 1 + index for index in wanted))
    assert calls[:last_needed] == [2] * last_needed  # in get_vision_features and in the stand-alone call
    assert calls[last_needed:] == [1] * (len(layers) - last_needed)  # in the stand-alone call only


def test_single_clip_feature_layer_keeps_no_hidden_states():
    model, _ = tiny_llava(vision="clip", vision_feature_layer=-2)
    seen = {}
    hook = model.model.vision_tower.register_forward_hook(
        lambda module, args, kwargs, output: seen.update(kwargs=kwargs, output=output), with_kwargs=True
    )
    with torch.no_grad():
        model.model.get_vision_features(pixels(1))
    hook.remove()
    assert seen["kwargs"]["output_hidden_states"] is False and seen["output"].hidden_states is None


def test_linear_projector_and_full_selection():
    model, tokenizer = tiny_llava(projector_type="linear", vision_feature_select_strategy="full")
    assert model.config.image_seq_length == 17  # 16 patches + CLS
    assert not hasattr(model.model.multi_modal_projector, "linear_2")
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\nhi"]))
    assert model(input_ids=ids, pixel_values=pixels(1)).image_hidden_states.shape[1] == 17


def test_minigpt4_qformer_stays_fp32_in_bfloat16(tmp_path):
    model, tokenizer = tiny_minigpt4()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert reloaded.model.qformer.layernorm.weight.dtype == torch.float32
    assert reloaded.model.query_tokens.dtype == torch.float32
    assert reloaded.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["<image>\nhi"]))
    assert torch.isfinite(reloaded(input_ids=ids, pixel_values=pixels(1)).logits.float()).all()


def test_plain_load_state_dict_reads_the_saved_file(model_and_tokenizer, tmp_path):
    """What the Trainer does on resume: `load_state_dict` of the saved safetensors (published vision key layout)."""
    from safetensors.torch import load_file

    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path)
    fresh = type(model)(model.config).eval()
    result = fresh.load_state_dict(load_file(tmp_path / "model.safetensors"), strict=False)
    assert result.unexpected_keys == []
    assert set(result.missing_keys) <= {"lm_head.weight"}  # tied to the input embeddings when the LM ties them
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor)
