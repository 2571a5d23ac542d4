"""The conditioning path can learn: a tiny HYDRA trained for seconds on a toy set, where each of six
prompts names one latent image, must predict the flow of an image far better with its own prompt than
with another's or the null prompt.

Measured (150 steps; flow loss right / shuffled at t = 0.5 and 0.9): the shipped recipe (velocity,
t ~ sigmoid(N(1.5, 1))) 0.59 / 3.10; the first bundled model's recipe (velocity, t ~ sigmoid(N(0, 1)))
1.40 / 1.93, which fails the 0.5 bound below; clean-latent prediction (t loc 0 or 1) 1.63 / 1.67, the
prompt ignored, as in the first bundled model."""

import torch

from hydra_core.config import HydraConfig, HydraTokConfig, tiny
from hydra_core.eval.suites import prompt_flow_losses
from hydra_core.text import generation_text
from hydra_core.unified import HydraModel

PROMPTS = ("a photo of a red circle", "a photo of a blue square", "a photo of two stars",
           "a photo of a green triangle above a yellow star", "a photo of a purple square",
           "a photo of three circles")
STEPS = 150


def toy_config(text_tokenizer, prediction: str, time_loc: float) -> HydraConfig:
    tok = HydraTokConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4, gen_layers=2,
                         num_attention_heads=2, intermediate_size=128, latent_channels=8, decoder_hidden_size=32,
                         decoder_layers=1, decoder_heads=2, distill_layers=(2, 4))
    llm = dict(vocab_size=len(text_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True)
    return HydraConfig(tokenizer=tok, llm=llm, flow_head_width=64, flow_head_layers=2, flow_prediction=prediction,
                       flow_time_loc=time_loc, token_ids={t: text_tokenizer.convert_tokens_to_ids(t)
                                                          for t in HydraConfig().token_ids},
                       preset="toy")


def train_toy(text_tokenizer, prediction: str, time_loc: float) -> dict:
    torch.manual_seed(0)
    config = toy_config(text_tokenizer, prediction, time_loc)
    model = HydraModel(config)
    n, c = config.tokenizer.num_tokens, config.tokenizer.latent_channels
    # One fixed latent per prompt: the whole image is determined by its prompt.
    targets = torch.randn(len(PROMPTS), n, c, generator=torch.Generator().manual_seed(1))
    enc = text_tokenizer([generation_text(text_tokenizer, p, n) for p in PROMPTS], return_tensors="pt",
                         padding=True, add_special_tokens=False)
    trained = [p for name, p in model.named_parameters() if not name.startswith(("vision.gen_vit", "vision.decoder"))]
    optimizer = torch.optim.AdamW(trained, lr=2e-3)
    generator = torch.Generator().manual_seed(2)
    for _ in range(STEPS):
        rows = torch.randint(0, len(PROMPTS), (16,), generator=generator)
        loss = model.flow_loss(enc.input_ids[rows], enc.attention_mask[rows], targets[rows], generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return prompt_flow_losses(model, text_tokenizer, list(PROMPTS), targets, times=(0.5, 0.9))


def test_generation_learns_to_listen_to_its_prompt(text_tokenizer):
    shipped = tiny()  # the recipe the bundled model is trained with
    losses = train_toy(text_tokenizer, shipped.flow_prediction, shipped.flow_time_loc)
    assert losses["right"] < 0.5 * losses["shuffled"], losses
    assert losses["right"] < 0.5 * losses["null"], losses
