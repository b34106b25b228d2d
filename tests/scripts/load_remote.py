"""Loads a saved minillava folder through the Auto classes where minillava cannot be imported, and writes what it
computed. Run by tests/test_remote_code.py with any Python (transformers 5.x or 4.57)."""

import json
import sys
import warnings


warnings.simplefilter("default")  # deprecation warnings reach stderr, where the test reads them


# Our package must not be importable: everything has to come from the folder's own code files.
for name in ("minillava", "modeling_minillava", "processing", "train"):
    sys.modules[name] = None

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def generic_loader_answer(path: str, image) -> dict:
    """What lmms-eval's generic `huggingface` model does with a folder (lmms_eval/models/chat/huggingface.py, 0.7.3):
    `AutoConfig`, then `AutoModel` with remote code (its model-type checks compare a string with config classes, so
    `AutoModel` is what it always takes), a chat template over `{"type": "image", "image": PIL}` parts, the processor
    called with empty `videos` and `audios` and a padding side, `generate` with the tokenizer's eos and pad ids, and
    `batch_decode` of the new tokens. Float32 here where it asks for bfloat16 on its GPUs."""
    transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"  # it passes torch_dtype
    model = transformers.AutoModel.from_pretrained(path, trust_remote_code=True, **{dtype_key: torch.float32}).eval()
    processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is in the image?"}]}]  # fmt: skip
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], padding=True, return_tensors="pt", images=[image], videos=[], audios=[],
                       padding_side="right")  # fmt: skip
    generated = model.generate(**inputs, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               do_sample=False, temperature=None, top_p=None, num_beams=1, max_new_tokens=5,
                               use_cache=True)  # fmt: skip
    new_tokens = [out[len(ids) :] for ids, out in zip(inputs["input_ids"], generated, strict=True)]
    answer = processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    return {"generic_loader_class": type(model).__name__, "generic_loader_generated": generated.tolist(),
            "generic_loader_answer": answer}  # fmt: skip


def main(path: str, out: str, resave: str | None = None) -> None:
    major = int(transformers.__version__.split(".")[0])
    auto_class = transformers.AutoModelForImageTextToText if major >= 5 else transformers.AutoModelForVision2Seq
    model, info = auto_class.from_pretrained(path, trust_remote_code=True, output_loading_info=True)
    model.eval()
    processor = transformers.AutoProcessor.from_pretrained(path, trust_remote_code=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    pipe = transformers.pipeline("image-text-to-text", model=path, trust_remote_code=True)
    chat = [
        {
            "role": "user",
            "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is in the image?"}],
        }
    ]
    answer = pipe(text=chat, max_new_tokens=5, do_sample=False, return_full_text=False)[0]["generated_text"]
    lmms_eval = generic_loader_answer(path, image)
    if resave:
        model.save_pretrained(resave)
        processor.save_pretrained(resave)
    save_file({"logits": logits.contiguous()}, f"{out}/logits.safetensors")
    result = {
        "transformers": transformers.__version__,
        "model_class": type(model).__name__,
        "model_module": type(model).__module__,
        "missing_keys": sorted(info["missing_keys"]),
        "unexpected_keys": sorted(info["unexpected_keys"]),
        "input_ids": inputs["input_ids"].tolist(),
        "generated": generated.tolist(),
        "pipeline_answer": answer,
        **lmms_eval,
    }
    with open(f"{out}/result.json", "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
