"""Text tokenizers and the chat format.

tiny: a byte-level BPE trained with `tokenizers` on the ShapesWorld corpus, its special tokens first
(ids 0..7, see config.SPECIAL_TOKENS). Both are wrapped as transformers' PreTrainedTokenizerFast with
a Qwen2.5-style chat template, so `apply_chat_template` renders every conversation the same way:

    <|im_start|>user\n<|image|>what color is the circle?<|im_end|>\n<|im_start|>assistant\nred<|im_end|>\n

An image part renders as <|image|>; the pipeline expands it to <|vision_start|> + N x <|image_pad|>
+ <|vision_end|>.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .config import EOS_TOKEN, IMAGE_TOKEN, IMG_END, IMG_PAD, IMG_START, PAD_TOKEN, SPECIAL_TOKENS

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
