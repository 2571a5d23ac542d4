"""HYDRA: attention masks and their effect, KV caches, the flow head, training stages."""

import pytest
import torch

from hydra_core.config import IMG_PAD
from hydra_core.train.stages import STAGES, configure_stage, trains
from hydra_core.unified import build_attention_mask
from hydra_core.unified.masks import position_ids_from


def test_mask_rule():
    # pad, text, text, image 1 x3, text, image 2 x2
    segments = torch.tensor([[-1, 0, 0, 1, 1, 1, 0, 2, 2]])
    allowed = build_attention_mask(segments)[0, 0]
    assert allowed.shape == (9, 9)
    assert not allowed[1:, 0].any()  # nobody attends to padding
    assert allowed[1, 1] and not allowed[1, 2]  # text is causal
    assert allowed[3:6, 3:6].all()  # image tokens see each other both ways
    assert allowed[3, 5] and not allowed[3, 6]  # ... but not the text after the image
    assert allowed[6, 1:6].all()  # text after an image sees all of it
    assert not allowed[5, 7]  # an earlier image does not see a later one
    assert allowed[7:9, 7:9].all() and allowed[7, 3:6].all()
    assert position_ids_from(segments).tolist() == [[0, 0, 1, 2, 3, 4, 5, 6, 7]]


def _image_sequence(model, prefix_ids):
    n = model.config.tokenizer.num_tokens
    pad = model.token_id(IMG_PAD)
    return torch.tensor([prefix_ids + [pad] * n + [5, 9, 10]])


def test_bidirectional_image_and_causal_text_effects(tiny_model):
    model = tiny_model
    n, c = model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels
    ids = _image_sequence(model, [1, 11, 12, 4])
    mask = torch.ones_like(ids)
    latents = torch.randn(1, n, c, generator=torch.Generator().manual_seed(0))
    segments = model.segments(ids, mask)

    def hidden(ids_, latents_):
        return model._run_llm(model.embed(ids_, latents_), segments)

    with torch.no_grad():
        base = hidden(ids, latents)
        changed_latents = latents.clone()
        changed_latents[0, -1] += 3.0  # the last image token
        changed = hidden(ids, changed_latents)
        image_start = 4
        # The first image token's output changes when a later image token changes ...
        assert (changed[0, image_start] - base[0, image_start]).abs().max() > 1e-4
        # ... while the text before the image does not.
        assert torch.allclose(changed[0, :image_start], base[0, :image_start], atol=1e-6)
        # Changing the last text token never changes any earlier output.
        later = ids.clone()
        later[0, -1] = 20
        out = hidden(later, latents)
        assert torch.allclose(out[0, :-1], base[0, :-1], atol=1e-6)
        assert (out[0, -1] - base[0, -1]).abs().max() > 1e-4


def test_prefix_cache_gives_the_same_velocity_as_a_full_pass(tiny_model):
    """The generation loop's cached prefix (reused at every step) equals one full forward pass."""
    model = tiny_model
    n, c = model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels
    prefix_ids = torch.tensor([[0, 0, 1, 11, 12, 4], [1, 13, 14, 15, 16, 4]])
    prefix_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    z = torch.randn(2, n, c, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        prefix = model.prefill(prefix_ids, prefix_mask)
        v1 = model.image_velocity(z, t, prefix)
        v2 = model.image_velocity(z, t, prefix)  # the cache was cut back, so a second step sees the same prefix
        pad = model.token_id(IMG_PAD)
        ids = torch.cat([prefix_ids, torch.full((2, n), pad)], dim=1)
        mask = torch.cat([prefix_mask, torch.ones(2, n, dtype=torch.long)], dim=1)
        hidden = model._run_llm(model.embed(ids, model.denormalize(z)), model.segments(ids, mask))
        full = model.flow_head(hidden[:, -n:], t, z)
    assert torch.allclose(v1, v2)
    assert torch.allclose(v1, full, atol=1e-5)
    assert prefix.cache.get_seq_length() == prefix_ids.shape[1]


def test_kv_cache_decoding_equals_full_forward(tiny_model):
    model = tiny_model
    ids = torch.tensor([[1, 11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        prefix = model.prefill(ids[:, :4], torch.ones(1, 4, dtype=torch.long))
        logits = [prefix.last_logits]
        for token in ids[0, 4:]:
            logits.append(model.decode_step(token[None], prefix))
        segments = model.segments(ids, None)
        full = model.llm.lm_head(model._run_llm(model.embed(ids, None), segments))[0, 3:]
    assert torch.allclose(torch.cat(logits), full, atol=1e-4)


def test_losses_and_image_count_check(tiny_model):
    model = tiny_model
    n, c = model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels
    ids = _image_sequence(model, [1, 11, 12, 4])
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    latents = torch.randn(1, n, c)
    assert torch.isfinite(model.ntp_loss(ids, mask, labels, latents))
    gen_ids = torch.cat([torch.tensor([[1, 11, 4]]), torch.full((1, n), model.token_id(IMG_PAD))], dim=1)
    loss = model.flow_loss(gen_ids, torch.ones_like(gen_ids), latents, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    with pytest.raises(ValueError, match="image positions"):
        model.embed(ids, latents[:, : n // 2])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_trains_and_freezes_the_right_parameters(tiny_config, name):
    from hydra_core.unified import HydraModel

    with torch.device("meta"):
        model = HydraModel(tiny_config)
    groups = configure_stage(model, STAGES[name])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, name
    assert sum(len(g["params"]) for g in groups) == len(trainable)

    def any_trained(prefix):
        return any(n.startswith(prefix) for n in trainable)

    def all_trained(prefix):
        names = [n for n, _ in model.named_parameters() if n.startswith(prefix)]
        return all(n in trainable for n in names)

    expected = {
        "text": {"llm.": True, "vision.": False, "flow_head.": False, "projector.": False},
        "tok1": {"vision.": True, "llm.": False, "flow_head.": False, "projector.": False},
        "tok2": {"vision.decoder.": True, "vision.gen_vit.": False, "vision.gsb.": False, "vision.sem_vit.": False,
                 "llm.": False},
        "umm1": {"llm.": False, "flow_head.": True, "projector.": True, "vision.sem_vit.": True,
                 "vision.gsb.unproj_und.": True, "vision.gen_vit.": False, "vision.gsb.proj.": False,
                 "vision.decoder.": False},
        "umm2": {"llm.": True, "flow_head.": True, "projector.": True, "vision.sem_vit.": True,
                 "vision.gen_vit.": False, "vision.gsb.proj.": False, "vision.decoder.": False},
    }
    expected["umm3"] = expected["umm2"]
    for prefix, trained in expected[name].items():
        assert (all_trained(prefix) if trained else not any_trained(prefix)), (name, prefix)
    # The paper's learning-rate pattern: the vision head learns fastest.
    lrs = {g["name"]: g["lr"] for g in groups}
    if "vision_head" in lrs:
        assert lrs["vision_head"] == max(lrs.values())


def test_the_flow_heads_latent_skip_starts_at_zero_reads_z_t_once_trained_and_is_saved(tiny_model, text_tokenizer,
                                                                                        tmp_path):
    """`add_flow_latent_input` keeps a trained head's velocities exactly; once its skip has weights the
    velocity depends on z_t through it, and the skip survives a save and load."""
    import copy

    from hydra_core.loading import load_pretrained, save_pretrained

    model = copy.deepcopy(tiny_model)
    n, c = model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels
    ids, mask = torch.tensor([[1, 13, 14, 15, 16, 4]]), torch.ones(1, 6, dtype=torch.long)
    z, t = torch.randn(1, n, c, generator=torch.Generator().manual_seed(2)), torch.tensor([0.6])
    with torch.no_grad():
        before = model.image_velocity(z, t, model.prefill(ids, mask))
        model.add_flow_latent_input()
        assert torch.equal(model.image_velocity(z, t, model.prefill(ids, mask)), before)
        torch.nn.init.normal_(model.flow_head.latent_proj.weight, std=0.2)
        hidden = torch.randn(1, n, model.llm.config.hidden_size)
        moved = model.flow_head(hidden, t, z) - model.flow_head(hidden, t, torch.zeros_like(z))
    assert moved.abs().mean() > 1e-3
    assert all(trains(STAGES[s], "flow_head.latent_proj.weight") for s in ("umm1", "umm2", "umm3"))
    save_pretrained(model, text_tokenizer, tmp_path, dtype=torch.float16)
    loaded = load_pretrained(tmp_path).model
    assert loaded.config.flow_head_latent_input
    torch.testing.assert_close(loaded.flow_head.latent_proj.weight, model.flow_head.latent_proj.weight,
                               atol=1e-3, rtol=1e-3)


def test_growing_the_llm_keeps_what_it_computes_until_trained_and_is_saved(tiny_model, text_tokenizer, tmp_path):
    """Block expansion (`grow_llm`): velocities and next-token logits are unchanged by the new layers until
    they train; their zeroed output projections get gradients; the deeper model saves and loads."""
    import copy

    from hydra_core.loading import load_pretrained, save_pretrained

    model = copy.deepcopy(tiny_model)
    layers = model.config.llm["num_hidden_layers"]
    n, c = model.config.tokenizer.num_tokens, model.config.tokenizer.latent_channels
    ids, mask = torch.tensor([[1, 13, 14, 15, 16, 4]]), torch.ones(1, 6, dtype=torch.long)
    z, t = torch.randn(1, n, c, generator=torch.Generator().manual_seed(3)), torch.tensor([0.4])
    with torch.no_grad():
        prefix = model.prefill(ids, mask)
        before_v, before_logits = model.image_velocity(z, t, prefix), prefix.last_logits
        model.grow_llm(layers + 1)
        prefix = model.prefill(ids, mask)
        assert len(model.llm.model.layers) == layers + 1 and model.config.llm["num_hidden_layers"] == layers + 1
        torch.testing.assert_close(model.image_velocity(z, t, prefix), before_v, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(prefix.last_logits, before_logits, atol=1e-5, rtol=1e-5)
    zeroed = [m for layer in model.llm.model.layers for m in (layer.self_attn.o_proj, layer.mlp.down_proj)
              if not m.weight.any()]
    assert len(zeroed) == 2  # the new layer's two output projections
    model.next_token_logits(ids, mask, None).square().sum().backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in zeroed)
    with pytest.raises(ValueError, match="can grow"):
        model.grow_llm(layers)
    save_pretrained(model, text_tokenizer, tmp_path, dtype=torch.float16)
    loaded = load_pretrained(tmp_path).model
    assert len(loaded.llm.model.layers) == layers + 1
