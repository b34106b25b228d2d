"""Chat templates (Jinja) for the LLaVA-1.5 and MiniGPT-4 prompt formats."""

import json


DEFAULT_IMAGE_TOKEN = "<image>"

LLAVA_SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Every template starts with this line; `get_chat_template(name, image_token=...)` rewrites it. The template only
# writes the placeholder once per image: the processor expands it to the connector's token count.
_IMAGE_TOKEN_LINE = '{%- set image_token = "<image>" -%}\n'

# A message's text parts joined by spaces (or its string content), and its number of `{"type": "image"}` parts.
_MACROS = r"""{%- macro text_of(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- else -%}
        {{- content | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro image_count(content) -%}
    {{- 0 if content is string else content | selectattr('type', 'equalto', 'image') | list | length -}}
{%- endmacro -%}
"""

# LLaVA-1.5 training format, `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>") in haotian-liu/LLaVA:
#   <s>SYSTEM USER: <image>\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT: {a2}</s>
# Images go first in their turn, each followed by "\n", as `preprocess_multimodal` does. The space after
# "ASSISTANT:" is inside the generation block: the prompt for generation ends with "ASSISTANT:", as in LLaVA.
VICUNA_V1 = (
    _IMAGE_TOKEN_LINE
    + _MACROS
    + r"""{%- if messages[0]['role'] == 'system' -%}
    {%- set system = text_of(messages[0]['content']) -%}
    {%- set messages = messages[1:] -%}
{%- else -%}
    {%- set system = "__LLAVA_SYSTEM_PROMPT__" -%}
{%- endif -%}
{{- bos_token | default('', true) + system + ' ' -}}
{%- for message in messages -%}
    {%- set text = text_of(message['content']) -%}
    {%- if message['role'] == 'user' -%}
        {{- 'USER: ' + (image_token + '\n') * (image_count(message['content']) | int) + text + ' ' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- 'ASSISTANT:' -}}
        {%- generation -%}
            {{- ' ' + text + eos_token -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""
).replace("__LLAVA_SYSTEM_PROMPT__", LLAVA_SYSTEM_PROMPT)

# LLaVA stage-1 alignment, `conv_llava_plain` with `preprocess_plain`: the user's text is dropped, only its images
# stay, then the caption and the separator "\n" (which is what LLaVA supervises after the caption):
#   <s><image>{caption}\n
# MiniGPT-4's stage 1 has the same shape (image embeddings, caption, end_sym "\n").
PLAIN = (
    _IMAGE_TOKEN_LINE
    + _MACROS
    + r"""{{- bos_token | default('', true) -}}
{%- for message in messages -%}
    {%- if message['role'] == 'user' -%}
        {%- if message['content'] is string -%}
            {{- image_token * message['content'].count(image_token) -}}
        {%- else -%}
            {{- image_token * (image_count(message['content']) | int) -}}
        {%- endif -%}
    {%- elif message['role'] == 'assistant' -%}
        {%- generation -%}
            {{- text_of(message['content']) + '\n' -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
"""
)

# MiniGPT-4 (Vicuna v0) stage-2 format, `prompt_template: '###Human: {} ###Assistant: '` and `end_sym: "###"`:
#   <s>###Human: <Img><image></Img> {q} ###Assistant: {a}###
# An optional system turn goes before, as in `CONV_VISION_Vicuna0` (`system + "###" + "Human: "`). A later user
# turn reuses the answer's closing "###": ...{a}###Human: {q2} ###Assistant: {a2}###
MINIGPT4_VICUNA0 = (
    _IMAGE_TOKEN_LINE
    + _MACROS
    + r"""{{- bos_token | default('', true) -}}
{%- if messages[0]['role'] == 'system' -%}
    {{- text_of(messages[0]['content']) -}}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
    {%- set text = text_of(message['content']) -%}
    {%- if message['role'] == 'user' -%}
        {%- set images = ('<Img>' + image_token + '</Img>') * (image_count(message['content']) | int) -%}
        {%- if loop.previtem is defined and loop.previtem['role'] == 'assistant' -%}
            {{- 'Human: ' -}}
        {%- else -%}
            {{- '###Human: ' -}}
        {%- endif -%}
        {{- [images, text] | select | join(' ') + ' ' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- '###Assistant:' -}}
        {%- generation -%}
            {{- ' ' + text + '###' -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '###Assistant:' -}}
{%- endif -%}
"""
)

# MiniGPT-4 (Llama-2) stage-2 format, `prompt_template: '[INST] {} [/INST] '` and `end_sym: "</s>"`:
#   <s>[INST] <Img><image></Img> {q} [/INST] {a}</s>
# Later turns open with a new BOS, as Llama-2 chat does; a system turn becomes Llama-2's <<SYS>> block.
MINIGPT4_LLAMA2 = (
    _IMAGE_TOKEN_LINE
    + _MACROS
    + r"""{%- if messages[0]['role'] == 'system' -%}
    {%- set system = text_of(messages[0]['content']) -%}
    {%- set messages = messages[1:] -%}
{%- else -%}
    {%- set system = '' -%}
{%- endif -%}
{%- for message in messages -%}
    {%- set text = text_of(message['content']) -%}
    {%- if message['role'] == 'user' -%}
        {%- set images = ('<Img>' + image_token + '</Img>') * (image_count(message['content']) | int) -%}
        {{- bos_token | default('', true) + '[INST] ' -}}
        {%- if loop.first and system -%}
            {{- '<<SYS>>\n' + system + '\n<</SYS>>\n\n' -}}
        {%- endif -%}
        {{- [images, text] | select | join(' ') + ' ' -}}
    {%- elif message['role'] == 'assistant' -%}
        {{- '[/INST]' -}}
        {%- generation -%}
            {{- ' ' + text + eos_token -}}
        {%- endgeneration -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '[/INST]' -}}
{%- endif -%}
"""
)

CHAT_TEMPLATES = {
    "vicuna_v1": VICUNA_V1,
    "plain": PLAIN,
    "minigpt4_vicuna0": MINIGPT4_VICUNA0,
    "minigpt4_llama2": MINIGPT4_LLAMA2,
}


# The text that closes an assistant turn in templates whose turns do not end with the tokenizer's EOS: generation
# stops there and decoded answers lose it.
TURN_SEPARATORS = {"minigpt4_vicuna0": "###"}


def turn_separator(chat_template: str | None) -> str | None:
    """The turn separator of a shipped chat template (None for the others and for templates ending turns in EOS)."""
    for name, template in CHAT_TEMPLATES.items():
        if chat_template == template:
            return TURN_SEPARATORS.get(name)
    return None


def get_chat_template(name: str, image_token: str = DEFAULT_IMAGE_TOKEN) -> str:
    """The chat template called `name`, writing `image_token` for each image."""
    if name not in CHAT_TEMPLATES:
        raise ValueError(f"Unknown chat template {name!r}; the templates are: {', '.join(CHAT_TEMPLATES)}.")
    template = CHAT_TEMPLATES[name]
    if image_token != DEFAULT_IMAGE_TOKEN:
        template = template.replace(_IMAGE_TOKEN_LINE, f"{{%- set image_token = {json.dumps(image_token)} -%}}\n", 1)
    return template


__all__ = [
    "TURN_SEPARATORS",
    "CHAT_TEMPLATES",
    "DEFAULT_IMAGE_TOKEN",
    "LLAVA_SYSTEM_PROMPT",
    "MINIGPT4_LLAMA2",
    "MINIGPT4_VICUNA0",
    "PLAIN",
    "VICUNA_V1",
    "get_chat_template",
    "turn_separator",
]
