"""Generation modes of both architectures, each against the same model's plain greedy (or uncached) result.

transformers' sdist has no `GenerationTesterMixin`, so these cover what it would: greedy, beam search, seeded
sampling, static cache, assisted and prompt-lookup decoding, `inputs_embeds`, continuing from a returned cache,
`torch.compile(fullgraph=True)`, and MiniGPT-4 stopping at its turn separator. Left padding is covered in
test_modeling.py (`test_batched_left_padded_generation_equals_one_at_a_time`)."""

import pytest
import torch
from tiny import image_prompt_ids, tiny_llava, tiny_minigpt4

from minillava.modeling.modeling_base import CACHE_NAME


ARCHS = {"llava": tiny_llava, "minigpt4": tiny_minigpt4}
NEW_TOKENS = 6


@pytest.fixture(params=sorted(ARCHS), scope="module")
def case(request):
    model, tokenizer = ARCHS[request.param]()
    ids = torch.tensor(image_prompt_ids(tokenizer, model, ["USER: <image>\nWhat is it? ASSISTANT:"]))
    pixels = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, ids, pixels


def new_tokens(output: torch.Tensor, prompt: torch.Tensor) -> list[int]:
    return output[0, prompt.shape[1] :].tolist()


def greedy_one_at_a_time(model, ids, pixels) -> list[int]:
    """Greedy decoding without generate or a cache: the full sequence through forward at every step. As `generate`
    with `min_new_tokens`, EOS is never picked, and neither is the image token (the model suppresses it)."""
    never = [model.generation_config.eos_token_id, *model.generation_config.suppress_tokens]
    sequence = ids
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(input_ids=sequence, pixel_values=pixels, use_cache=False).logits[:, -1:]
            logits[..., never] = float("-inf")
            sequence = torch.cat([sequence, logits.argmax(-1)], dim=1)
    return new_tokens(sequence, ids)


def generate(model, ids, pixels, **kwargs) -> torch.Tensor:
    kwargs = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, **kwargs}
    return model.generate(input_ids=ids, pixel_values=pixels, **kwargs)


def test_greedy_equals_one_at_a_time(case):
    model, ids, pixels = case
    assert new_tokens(generate(model, ids, pixels), ids) == greedy_one_at_a_time(model, ids, pixels)


def test_beam_search_with_cache_equals_without(case):
    model, ids, pixels = case
    cached = generate(model, ids, pixels, num_beams=3, num_return_sequences=2)
    uncached = generate(model, ids, pixels, num_beams=3, num_return_sequences=2, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_seeded_sampling_is_reproducible_and_cache_independent(case):
    model, ids, pixels = case
    runs = []
    for use_cache in (True, True, False):
        torch.manual_seed(7)
        runs.append(generate(model, ids, pixels, do_sample=True, top_k=20, temperature=1.5, use_cache=use_cache))
    assert runs[0].tolist() == runs[1].tolist() == runs[2].tolist()


def test_static_cache_equals_dynamic(case):
    model, ids, pixels = case
    static = generate(model, ids, pixels, cache_implementation="static")
    assert new_tokens(static, ids) == greedy_one_at_a_time(model, ids, pixels)


def test_assisted_decoding_equals_greedy(case):
    model, ids, pixels = case
    # (transformers 4.57 and 5.0 refuse `min_new_tokens` in assisted decoding: both runs may stop at EOS here)
    assisted = generate(model, ids, pixels, min_new_tokens=None, assistant_model=model)
    assert assisted.tolist() == generate(model, ids, pixels, min_new_tokens=None).tolist()


def test_prompt_lookup_decoding_equals_greedy(case):
    model, ids, pixels = case
    lookup = generate(model, ids, pixels, prompt_lookup_num_tokens=3)
    assert new_tokens(lookup, ids) == greedy_one_at_a_time(model, ids, pixels)


def test_inputs_embeds_equals_input_ids(case):
    model, ids, pixels = case
    embeds = model.get_input_embeddings()(ids).detach()
    from_embeds = model.generate(
        inputs_embeds=embeds, pixel_values=pixels, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS
    )
    assert from_embeds[0].tolist() == greedy_one_at_a_time(model, ids, pixels)  # only the new tokens come back


def test_continuing_from_a_returned_cache(case):
    """Generate 3 tokens, then 3 more from the returned cache (the images are in it): as 6 in one go."""
    model, ids, pixels = case
    first = generate(model, ids, pixels, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True)
    cache = getattr(first, CACHE_NAME)
    assert cache is not None and cache.get_seq_length() == ids.shape[1] + 2
    more = model.generate(
        input_ids=first.sequences, max_new_tokens=3, min_new_tokens=3, do_sample=False, **{CACHE_NAME: cache}
    )
    assert new_tokens(more, ids) == greedy_one_at_a_time(model, ids, pixels)


def test_forward_compiles_with_fullgraph(case):
    model, ids, pixels = case
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixels).logits
        torch.testing.assert_close(compiled(input_ids=ids, pixel_values=pixels).logits, expected)


def test_minigpt4_stops_at_its_turn_separator(tmp_path):
    """A MiniGPT-4 folder's generation config stops at `###` and its processor cuts the answer there."""
    from tiny import save_parts
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from minillava.train.training.build import BuildArguments, build

    parts = save_parts(tmp_path / "parts")
    build(
        BuildArguments(
            arch="minigpt4", vision_model=parts["blip2"], text_model=parts["llama"], output_dir=str(tmp_path / "m")
        )
    )
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "m").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "m")
    separator_id = processor.tokenizer.convert_tokens_to_ids("###")
    assert separator_id in model.generation_config.eos_token_id
    inputs = processor(text=["###Human: hi ###Assistant:"], return_tensors="pt")
    # `###` made the likeliest token after a first word: generation must end right there
    generated = model.generate(
        **inputs, max_new_tokens=8, do_sample=False, min_new_tokens=2, sequence_bias={(separator_id,): 100.0}
    )
    answer = generated[:, inputs["input_ids"].shape[1] :]
    assert answer.shape[1] == 3 and answer[0, -1] == separator_id  # 2 forced tokens, then the separator ends it
    decode = processor.post_process_image_text_to_text
    for text, expected in (
        (" two###", " two"),
        ("###Human: hi ###Assistant: two###", "###Human: hi ###Assistant: two"),
    ):
        assert decode(processor.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids) == [expected]
