"""Build HYDRA-Tiny from nothing: text tokenizer, semantic teacher, tokenizer stages 1-2, unified
stages I-III, then the checkpoint folder.

    python -m hydra_core.train --work runs/tiny --out assets/hydra-tiny

Each stage saves its result under --work/<stage>/ and is skipped when that exists, and each
stage resumes from its last saved state, so the same command continues an interrupted build.

Several processes (GPUs, or CPU processes with --cpu) train one model, each on its share of every
step's batch; only the main process writes the logs, stage results and the checkpoint:

    accelerate launch --num_processes 2 -m hydra_core.train --work runs/tiny --out assets/hydra-tiny

Continue training a built checkpoint (a new segment, recorded beside the earlier ones in the
folder's training.json and model card):

    python -m hydra_core.train --init-from assets/hydra-tiny --stages umm3 --steps umm3=3000 \
        --seed 1 --work runs/tiny-2 --out assets/hydra-tiny

(`--stages tok2` refines the pixel decoder of a built checkpoint, `--stages text` trains its LLM on text alone;
`--lr decoder=1e-3` sets a group's rate.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from safetensors.torch import load_file, save_model
from torch import nn
from transformers import PreTrainedTokenizerFast

from .. import config as hconfig
from ..data import shapesworld as sw
from ..loading import load_pretrained, save_pretrained
from ..text import train_bpe
from ..tokenizer import build_teacher
from ..tokenizer.losses import PatchDiscriminator, hinge_d_loss, hinge_g_loss, perceptual_loss
from ..unified import HydraModel
from ..unified.latent_norm import LATENT_NORMS
from ..viz import PCABasis
from . import data
from .loop import LoopConfig, shard, train
from .stages import GROUPS, STAGES, configure_stage, trains

# Steps per stage at --scale 1.
STEPS = {"teacher": 1500, "text": 200, "tok1": 1000, "tok2": 200, "umm1": 150, "umm2": 2200, "umm3": 1000}
BUILD_ORDER = ("teacher", "text", "tok1", "tok2", "latents", "umm1", "umm2", "umm3")
# What a built checkpoint can be continued with: the LLM on text alone, the decoder's refinement (it needs no
# teacher, and the latent space it decodes stays as it is) and the unified stages.
CONTINUABLE = ("text", "tok2", "umm1", "umm2", "umm3")
BATCH = {"teacher": 32, "text": 64, "tok": 32, "umm": 32}
DEFAULT_BATCH = dict(BATCH)  # what a segment that recorded no batch sizes trained with (--batch overrides BATCH)
PHOTO_FRACTION = 0.3
# Share of generation targets described by a dense caption (every object's size, colour, shape and
# place, and the background) instead of a GenEval prompt or a short caption: see the model card's
# ablation table for why.
DENSE_SHARE = 0.5
MONITOR_EVERY = 100
MONITOR_SCENES = 48
WHITENING_IMAGES = 512  # pool images whose latents fit the flow space's principal axes (latent_norm "pca")
# The teacher's per-token loss: "balanced" (the default and the bundled model's), background and object tokens
# weighing the same (shape 0.80 after 1,500 steps; the model card's notes), or "mean" over all tokens (the model
# bundled until 2026-12-06: most tokens are background, and its teacher left shapes at chance, 0.22 of object tokens).
TEACHER_LOSSES = ("mean", "balanced")
DEFAULT_TEACHER_LOSS = "balanced"
# Held-out items (monitors and the model card's evaluation) are drawn with this seed whatever the
# training seed, so every segment of a model is measured on the same items.
HELDOUT_SEED = 0
SEGMENTS_NAME = "training.json"


@dataclass
class StagePlan:
    modules: dict[str, nn.Module]
    groups: list[dict]
    step_fn: Callable[[int], dict[str, torch.Tensor]]
    extra_optimizers: list = field(default_factory=list)
    monitor: Callable[[], dict[str, float]] | None = None  # held-out measures for the log
    # Modules with their own optimizer (the discriminator): prepared on their own by the loop, which
    # puts the prepared module in this dict; the step reads it from here.
    aux_modules: dict[str, nn.Module] = field(default_factory=dict)


class Teacher(nn.Module):
    """The semantic teacher: a ViT of the tokenizer's shape with per-token and count heads."""

    def __init__(self, tok_cfg: hconfig.HydraTokConfig):
        super().__init__()
        self.vit = build_teacher(tok_cfg)
        self.token_head = nn.Linear(tok_cfg.hidden_size, data.NUM_TOKEN_CLASSES)
        self.count_head = nn.Linear(tok_cfg.hidden_size, sw.MAX_OBJECTS)

    def forward(self, pixels: torch.Tensor):
        out = self.vit(pixels, output_hidden_states=True)
        tokens = out.last_hidden_state[:, 1:]
        return self.token_head(tokens), self.count_head(tokens.mean(1)), out.hidden_states


class Builder:
    """init_from: a checkpoint folder to continue (its tokenizer, config, weights and earlier segments);
    None builds from nothing.

    Under `accelerate launch` every process builds the same model and draws the same batch at each step,
    of which it trains on its own share (`loop.shard`); the main process alone writes files."""

    def __init__(self, work: Path, out: Path, scale: float, seed: int, pool_size: int, init_from: Path | None = None,
                 workers: int = 1, save_every: int = 50, whiten: bool = False, image_positions: float = 0.0,
                 teacher_loss: str = DEFAULT_TEACHER_LOSS, flow_latent_input: bool = False,
                 qa_mix: str = data.DEFAULT_QA_MIX, llm_layers: int | None = None,
                 new_layer_lr: float | None = None, gen_shape_weights: dict[str, float] | None = None):
        self.work, self.out, self.scale, self.seed, self.init_from = work, out, scale, seed, init_from
        self.gen_shape_weights = gen_shape_weights or {}  # oversample generation targets showing these shapes
        self.qa_mix = qa_mix  # data.QA_MIXES: how the unified stages draw an image's questions
        self.teacher_loss = teacher_loss  # TEACHER_LOSSES
        self.whiten = whiten  # latent_norm "pca": the flow generates in whitened latents (unified/latent_norm.py)
        self.image_positions = image_positions  # > 0: add image position embeddings at this scale to a checkpoint without them
        self.flow_latent_input = flow_latent_input  # give the flow head the noisy-latent skip (unified/flow_head.py)
        self.llm_layers = llm_layers  # deepen a checkpoint's LLM to this many layers (HydraModel.grow_llm)
        self.new_layer_lr = new_layer_lr  # the grown layers' learning rate (default: the LLM's)
        self.new_layers: list[int] = []
        self.save_every = save_every
        self.trained_stages: tuple[str, ...] = ()  # what build() ran: the segment record reads only their logs
        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.device = self.state.device
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # the tiny model's fp32 matmuls; TF32 is ample for training
            torch.backends.cudnn.allow_tf32 = True
        if self.state.is_main_process:
            self.work.mkdir(parents=True, exist_ok=True)
        self.pool = data.make_pool(pool_size, seed, workers=workers)
        self.pool_latents: torch.Tensor | None = None  # GSB means of the pool, once the tokenizer is trained
        self.earlier_segments: list[dict] = []
        if init_from is not None:
            checkpoint = load_pretrained(init_from)
            self.tokenizer, self.model, self.basis = checkpoint.tokenizer, checkpoint.model.train(), checkpoint.basis
            self.model.to(self.device)
            self.config = self.model.config
            self.teacher = None
            record = Path(init_from) / SEGMENTS_NAME
            self.earlier_segments = json.loads(record.read_text())["segments"] if record.is_file() else [
                {"command": f"(unrecorded training of {init_from})", "stages": {}}]
            return
        self.tokenizer = self._text_tokenizer()
        self.config = hconfig.tiny(vocab_size=len(self.tokenizer))
        torch.manual_seed(seed)
        self.model = HydraModel(self.config).to(self.device)
        if image_positions:
            self.model.add_image_positions(image_positions)
        if flow_latent_input:
            self.model.add_flow_latent_input()
        self.teacher = Teacher(self.config.tokenizer).to(self.device)
        self.basis: PCABasis | None = None

    # ------------------------------------------------------------------ helpers
    def steps(self, stage: str) -> int:
        return max(10, int(STEPS[stage] * self.scale))

    def _text_tokenizer(self) -> PreTrainedTokenizerFast:
        path = self.work / "text_tokenizer"
        with self.state.main_process_first():  # the main process trains and saves it, the others read it
            if (path / "tokenizer.json").is_file():
                tok = PreTrainedTokenizerFast.from_pretrained(path)
                tok.padding_side = "left"
                return tok
            corpus = sw.text_corpus(np.random.default_rng(self.seed), 4000) + list(data.DESCRIBE)
            tok = train_bpe(corpus, vocab_size=1024)
            tok.save_pretrained(path)
            return tok

    def _done(self, stage: str) -> Path:
        return self.work / stage / "done.safetensors"

    def _run(self, stage: str, plan: "StagePlan") -> None:
        cfg = LoopConfig(steps=self.steps(stage), out=self.work / stage, seed=self.seed,
                         warmup=min(100, self.steps(stage) // 10), monitor_every=MONITOR_EVERY,
                         save_every=self.save_every)
        # A fresh Accelerator per stage: each one checkpoints only the modules and optimizers it prepared.
        accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        train(accelerator, plan.modules, plan.groups, plan.step_fn, cfg, plan.extra_optimizers, plan.monitor,
              plan.aux_modules)

    def _finish(self, stage: str, module: nn.Module) -> None:
        if self.state.is_main_process:
            save_model(module, str(self._done(stage)))
        self.state.wait_for_everyone()

    def _restore(self, stage: str, module: nn.Module) -> bool:
        """Load what a finished stage trained (and only that, so stages compose in order)."""
        if not self._done(stage).is_file():
            return False
        state = load_file(self._done(stage))
        if stage in STAGES:
            state = {k: v for k, v in state.items() if trains(STAGES[stage], k)}
        module.load_state_dict(state, strict=False)
        return True

    def _generator(self, step: int) -> torch.Generator:
        # Noise (CPU generator, so a seed draws the same on any device) for this process's share: each
        # process draws its own; one process draws as it always did.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step + 7_919 * self.state.process_index)

    def _share(self, batch):
        """This process's share of a batch every process drew whole, its tensors on this process's device."""
        batch = shard(self.state, batch)
        if isinstance(batch, dict):
            return {k: v.to(self.device) if torch.is_tensor(v) and k != "index" else v for k, v in batch.items()}
        return batch.to(self.device) if torch.is_tensor(batch) else batch

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        return data.to_pixels(images).to(self.device)

    # ------------------------------------------------------------------ stages
    def plan_teacher(self) -> StagePlan:
        patch = self.config.tokenizer.patch_size

        def step_fn(step):
            rng = data.step_rng(self.seed, step)
            idx = self._share(rng.integers(0, len(self.pool.scenes), BATCH["teacher"]))
            token_logits, count_logits, _ = self.teacher(self._pixels(self.pool.images[idx]))
            labels = data.token_labels(self.pool, idx, patch).to(self.device)
            counts = torch.tensor([len(self.pool.scenes[i].objects) - 1 for i in idx], device=self.device)
            per_token = nn.functional.cross_entropy(token_logits.reshape(-1, token_logits.shape[-1]), labels.reshape(-1),
                                                    reduction="none")
            if self.teacher_loss == "balanced":
                is_object = labels.reshape(-1) > 0
                token_loss = per_token[~is_object].mean() + per_token[is_object].mean()
            else:
                token_loss = per_token.mean()
            count_loss = nn.functional.cross_entropy(count_logits, counts)
            acc = (token_logits.argmax(-1) == labels).float().mean()
            return {"loss": token_loss + count_loss, "token_acc": acc.detach(), "count": count_loss.detach()}

        params = [{"params": list(self.teacher.parameters()), "lr": 1e-3}]
        return StagePlan({"teacher": self.teacher}, params, step_fn, monitor=self.teacher_monitor())

    def plan_text(self) -> StagePlan:
        groups = configure_stage(self.model, STAGES["text"])

        def step_fn(step):
            rng = data.step_rng(self.seed, step)
            b = self._share(data.text_batch(self.tokenizer, self.pool, rng, BATCH["text"], self.qa_mix))
            loss = self.model.ntp_loss(b["input_ids"], b["attention_mask"], b["labels"], None)
            return {"loss": loss}

        return StagePlan({"model": self.model}, groups, step_fn)

    def plan_tok1(self) -> StagePlan:
        cfg = self.config.tokenizer
        vision = self.model.vision
        teacher = self.teacher.vit.eval().requires_grad_(False).to(self.device)
        perceptual = perceptual_loss(cfg.perceptual)
        groups = configure_stage(self.model, STAGES["tok1"])

        def step_fn(step):
            rng = data.step_rng(self.seed, step)
            pixels = self._pixels(self._share(data.tokenizer_images(self.pool, rng, BATCH["tok"], PHOTO_FRACTION)))
            gen = self._generator(step)
            enc = vision.encode(pixels, sample=True, generator=gen, semantic_noise=cfg.semantic_noise)
            flow, x_hat = vision.decoder_losses(pixels, enc.gsb.latent, generator=gen)
            with torch.no_grad():
                teacher_hidden = teacher(pixels, output_hidden_states=True).hidden_states
            reg = vision.reg_losses(enc)
            losses = {"flow": flow, "kl": reg["kl"], "cos": reg["cos"],
                      "distill": vision.distill_loss(enc, teacher_hidden)}
            if perceptual is not None:
                losses["perceptual"] = perceptual(x_hat, pixels)
            total = (cfg.flow_weight * flow + cfg.kl_weight * reg["kl"] + cfg.cos_weight * reg["cos"]
                     + cfg.distill_weight * losses["distill"] + cfg.perceptual_weight * losses.get("perceptual", 0))
            return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

        recon, semantic = self.recon_monitor(), self.semantic_monitor()
        return StagePlan({"model": self.model}, groups, step_fn, monitor=lambda: recon() | semantic())

    def plan_tok2(self) -> StagePlan:
        cfg = self.config.tokenizer
        vision = self.model.vision
        perceptual = perceptual_loss(cfg.perceptual)
        groups = configure_stage(self.model, STAGES["tok2"])
        aux = {"disc": PatchDiscriminator().to(self.device)}
        disc_opt = torch.optim.AdamW(aux["disc"].parameters(), lr=2e-4, betas=(0.5, 0.9))

        def step_fn(step):
            rng = data.step_rng(self.seed, step)
            pixels = self._pixels(self._share(data.tokenizer_images(self.pool, rng, BATCH["tok"], PHOTO_FRACTION)))
            gen = self._generator(step)
            with torch.no_grad():
                latent = vision.encode(pixels, run_sem_vit=False).gsb.mean
            flow, x_hat = vision.decoder_losses(pixels, latent, generator=gen)
            disc = aux["disc"]  # the prepared one (its gradients averaged across processes)
            # Discriminator step on detached samples, then the decoder's adversarial term.
            disc_opt.zero_grad(set_to_none=True)
            d_loss = hinge_d_loss(disc(pixels), disc(x_hat.detach()))
            d_loss.backward()
            disc_opt.step()
            g_loss = hinge_g_loss(disc(x_hat))
            perc = perceptual(x_hat, pixels) if perceptual is not None else torch.zeros(())
            total = cfg.flow_weight * flow + cfg.perceptual_weight * perc + cfg.gan_weight * g_loss
            return {"loss": total, "flow": flow.detach(), "perceptual": perc.detach(), "g": g_loss.detach(),
                    "d": d_loss.detach()}

        return StagePlan({"model": self.model}, groups, step_fn, [(disc_opt, lambda step: None)],
                         monitor=self.recon_monitor(), aux_modules=aux)

    def recon_monitor(self) -> Callable[[], dict[str, float]]:
        """PSNR of held-out reconstructions: one decoder step (the decoder's estimate from pure noise)
        and the model's default steps, on ShapesWorld scenes and photo crops (evaluation streams)."""
        from ..data.photos import heldout_photo_crops
        from ..eval.suites import eval_rng, heldout_scene

        size = self.config.tokenizer.image_size
        rng = eval_rng(HELDOUT_SEED, "recon")
        sets = {"sw": np.stack([heldout_scene(rng, size)[1] for _ in range(MONITOR_SCENES)]),
                "photo": np.stack(list(heldout_photo_crops(MONITOR_SCENES // 2, size=size, seed=HELDOUT_SEED)))}
        vision = self.model.vision

        @torch.no_grad()
        def monitor() -> dict[str, float]:
            out = {}
            for name, images in sets.items():
                pixels = self._pixels(images)
                latent = vision.encode_latent(pixels)
                noise = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(0)).to(self.device)
                for steps in (1, None):
                    recon = vision.decode(latent, steps=steps, noise=noise)
                    mse = (recon - pixels).pow(2).mean(dim=(1, 2, 3)) / 4  # [-1, 1] -> [0, 1] scale
                    out[f"psnr{steps or ''}_{name}"] = float((10 * torch.log10(1 / mse.clamp(min=1e-10))).mean())
            return out

        return monitor

    def _token_scenes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scenes outside the training pool, as pixels [M, 3, S, S] and per-token classes [M, N]."""
        scenes = data.make_pool(MONITOR_SCENES, HELDOUT_SEED + 7_777)
        labels = data.token_labels(scenes, np.arange(MONITOR_SCENES), self.config.tokenizer.patch_size)
        return self._pixels(scenes.images), labels.to(self.device)

    def teacher_monitor(self) -> Callable[[], dict[str, float]]:
        """The teacher's colour and shape accuracy on the object tokens of scenes outside the pool: the
        most that distillation can teach Sem-ViT."""
        pixels, labels = self._token_scenes()

        @torch.no_grad()
        def monitor() -> dict[str, float]:
            return _token_accuracy(self.teacher(pixels)[0].argmax(-1), labels, "teacher")

        return monitor

    def semantic_monitor(self) -> Callable[[], dict[str, float]]:
        """How much of each object token's colour and shape Sem-ViT still reads from a noised latent: the
        teacher's token classifier on Sem-ViT's output (scaled to the teacher's feature norm), at noise
        t = 0, 0.3, 0.6 (tokenizer.noise_latent). The unified model reads noisy latents through Sem-ViT
        while generating, and a flow forms the latent's large directions first: what survives noise is
        what the prompt can steer early."""
        from ..tokenizer.model import noise_latent

        pixels, labels = self._token_scenes()
        vision, teacher = self.model.vision, self.teacher
        with torch.no_grad():  # the teacher is frozen from here on
            teacher_norm = teacher.vit(pixels).last_hidden_state[:, 1:].norm(dim=-1, keepdim=True)

        @torch.no_grad()
        def monitor() -> dict[str, float]:
            mean = vision.encode_latent(pixels)
            out = {}
            for t in (0.0, 0.3, 0.6):
                noised = noise_latent(mean, torch.full((len(mean),), t), torch.Generator().manual_seed(0))
                features = vision.semantic_features(noised)
                logits = teacher.token_head(features * teacher_norm / features.norm(dim=-1, keepdim=True))
                out |= _token_accuracy(logits.argmax(-1), labels, f"sem_t{t:g}")
            return out

        return monitor

    def measure_latents(self) -> PCABasis:
        """Latent statistics (for the flow's normalisation) and the latent panel's PCA basis."""
        rng = np.random.default_rng(self.seed + 1)
        images = data.tokenizer_images(self.pool, rng, 512, PHOTO_FRACTION)
        means = self.encode_images(images)
        self.config.latent_mean = round(float(means.mean()), 5)
        self.config.latent_std = round(float(means.std()), 5)
        self.model.config = self.config
        if self.whiten:
            self.model.whiten_latents(means)
        self.encode_pool()
        return PCABasis.fit(means.reshape(-1, means.shape[-1]).cpu().numpy())

    def encode_pool(self) -> None:
        # The tokenizer's encoder is frozen from here on: every unified step reads these, not pixels.
        self.pool_latents = self.encode_images(self.pool.images)

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, batch: int = 128) -> torch.Tensor:
        """uint8 [M, S, S, 3] -> GSB means [M, N, C]."""
        return torch.cat([self.model.vision.encode_latent(self._pixels(images[i:i + batch]))
                          for i in range(0, len(images), batch)])

    def _with_new_layer_rate(self, groups: list[dict]) -> list[dict]:
        """Move the layers `grow_llm` added out of the "llm" group into their own at --new-layer-lr: started
        at zero, at the LLM's rate they change what the model computes too slowly to be measured."""
        if not (self.new_layers and self.new_layer_lr):
            return groups
        prefixes = tuple(f"llm.model.layers.{i}." for i in self.new_layers)
        new = {id(p) for n, p in self.model.named_parameters() if n.startswith(prefixes)}
        out = []
        for group in groups:
            moved = [p for p in group["params"] if id(p) in new]
            if moved:
                out.append({**group, "params": [p for p in group["params"] if id(p) not in new]})
                out.append({"params": moved, "lr": self.new_layer_lr, "name": f"{group['name']}_new_layers"})
            else:
                out.append(group)
        return out

    def plan_umm(self, name: str) -> StagePlan:
        stage = STAGES[name]
        groups = self._with_new_layer_rate(configure_stage(self.model, stage))
        n_text, n_und, n_gen = _split(BATCH["umm"], stage.data_ratio)
        n_img = self.config.tokenizer.num_tokens
        qa_share = {"umm1": 0.3, "umm2": 0.7, "umm3": 0.9}[name]
        model = self.model
        if self.pool_latents is None:
            raise RuntimeError("the unified stages need the pool's latents: run the 'latents' step first")
        latents = self.pool_latents
        scene_probs = data.shape_weights(self.pool, self.gen_shape_weights) if self.gen_shape_weights else None

        def step_fn(step):
            rng = data.step_rng(self.seed, step)
            out, total = {}, 0.0
            ntp_terms = []
            if n_und:
                b = self._share(data.understanding_batch(self.tokenizer, self.pool, rng, n_und, n_img, qa_share,
                                                         self.qa_mix))
                ntp_terms.append((len(b["index"]), model.ntp_loss(b["input_ids"], b["attention_mask"], b["labels"],
                                                        latents[b["index"]])))
            if n_text:
                b = self._share(data.text_batch(self.tokenizer, self.pool, rng, n_text, self.qa_mix))
                ntp_terms.append((len(b["input_ids"]), model.ntp_loss(b["input_ids"], b["attention_mask"], b["labels"], None)))
            if ntp_terms:
                ntp = sum(n * loss for n, loss in ntp_terms) / sum(n for n, _ in ntp_terms)
                total = total + self.config.ntp_weight * ntp
                out["ntp"] = ntp.detach()
            if n_gen:
                b = self._share(data.generation_batch(self.tokenizer, self.pool, rng, n_gen, n_img,
                                                      self.config.cfg_dropout, DENSE_SHARE, scene_probs))
                flow = model.flow_loss(b["input_ids"], b["attention_mask"], latents[b["index"]],
                                       generator=self._generator(step))
                total = total + self.config.flow_weight * flow
                out["flow"] = flow.detach()
            return {"loss": total, **out}

        conditioning, qa = self.conditioning_monitor(), self.qa_monitor()
        return StagePlan({"model": model}, groups, step_fn, monitor=lambda: conditioning() | qa())

    def conditioning_monitor(self) -> Callable[[], dict[str, float]]:
        """Held-out flow loss with the right and with shuffled prompts (see eval.suites.prompt_flow_losses)."""
        from ..eval.suites import conditioning_items, prompt_flow_losses

        prompts, images = conditioning_items(MONITOR_SCENES, HELDOUT_SEED, self.config.tokenizer.image_size)
        latents = self.encode_images(images)

        def monitor() -> dict[str, float]:
            losses = prompt_flow_losses(self.model, self.tokenizer, prompts, latents, HELDOUT_SEED)
            return {f"heldout_{k}": losses[k] for k in ("right", "shuffled", "null", "gap")}

        return monitor

    def qa_monitor(self) -> Callable[[], dict[str, float]]:
        """Held-out questions answered under teacher forcing (every answer token right), about the right
        image and, as the control, about another scene's image."""
        from ..eval.suites import mismatched, vqa_items

        items = vqa_items(MONITOR_SCENES, HELDOUT_SEED, self.config.tokenizer.image_size)
        latents = self.encode_images(np.stack([np.asarray(image) for image, _ in items]))
        rows, labels = [], []
        for _, qa in items:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa.question}]},
                        {"role": "assistant", "content": data.answer_text(qa, self.qa_mix)}]
            ids, lab = data.encode_conversation(self.tokenizer, messages, self.config.tokenizer.num_tokens)
            rows.append(ids)
            labels.append(lab)
        input_ids = data.pad_right(rows, self.tokenizer.pad_token_id).to(self.device)
        mask = data.pad_right([[1] * len(r) for r in rows], 0).to(self.device)
        targets = data.pad_right(labels, -100)[:, 1:].to(self.device)
        others = latents[torch.tensor(mismatched(list(range(len(items))), len(sw.QTYPES)))]

        @torch.no_grad()
        def monitor() -> dict[str, float]:
            out = {}
            for name, images in (("qa_right", latents), ("qa_other", others)):
                predicted = self.model.next_token_logits(input_ids, mask, images).argmax(-1)
                correct = ((predicted == targets) | (targets == -100)).all(dim=1)
                out[f"heldout_{name}"] = float(correct.float().mean())
            return out

        return monitor

    def plan(self, stage: str) -> StagePlan:
        return self.plan_umm(stage) if stage.startswith("umm") else getattr(self, f"plan_{stage}")()

    def run_stage(self, stage: str) -> None:
        """Train a stage (resuming its saved state), or restore its result if it is done."""
        module = self.teacher if stage == "teacher" else self.model
        if self._restore(stage, module):
            return
        self._run(stage, self.plan(stage))
        self._finish(stage, module)

    # ------------------------------------------------------------------ all
    def build(self, until: str | None = None, stages: tuple[str, ...] = ()) -> Path | None:
        """Run the build (or, from a checkpoint, the given `stages`) and write the checkpoint folder;
        None when stopped early by `until`."""
        if self.init_from is not None:
            order = ("latents", *stages)
        else:
            order = BUILD_ORDER
        self.trained_stages = tuple(order)
        for stage in order:
            start = time.perf_counter()
            if stage == "latents":
                if self.init_from is None:
                    self.basis = self.measure_latents()
                else:  # the checkpoint's PCA basis stays; its normalisation too, unless whitening is asked
                    self.encode_pool()
                    if self.image_positions and not self.config.image_position_embedding:
                        self.model.add_image_positions(self.image_positions)
                    if self.flow_latent_input and not self.config.flow_head_latent_input:
                        self.model.add_flow_latent_input()
                    if self.llm_layers and self.llm_layers != self.config.llm["num_hidden_layers"]:
                        self.new_layers = self.model.grow_llm(self.llm_layers)
                    if self.whiten and self.config.latent_norm != "pca":
                        self.model.whiten_latents(self.pool_latents[:WHITENING_IMAGES])
            else:
                self.run_stage(stage)
            if self.state.is_main_process:
                print(f"[build] {stage} finished in {time.perf_counter() - start:.1f} s", flush=True)
            if stage == until:
                return None
        self.model.requires_grad_(False)
        if self.state.is_main_process:
            # float16 halves the file (the bundled checkpoint must stay under 60 MB); loading upcasts.
            save_pretrained(self.model, self.tokenizer, self.out, basis=self.basis, dtype=torch.float16)
        self.state.wait_for_everyone()
        return self.out

    def segment(self, command: str) -> dict:
        """This run's record: command, machine, and each stage's steps, minutes, final losses and last
        held-out measures (from the stage logs), with the run's notes (work/notes.md, work/ablations.md)."""
        from .card import read_stage_logs

        notes = {name: (self.work / f"{name}.md").read_text().strip() if (self.work / f"{name}.md").is_file() else ""
                 for name in ("notes", "ablations")}
        return {"command": command, "init_from": str(self.init_from) if self.init_from else None,
                "seed": self.seed, "date": time.strftime("%Y-%m-%d"),
                "machine": f"{os.cpu_count()}-core {platform.machine()} CPU, "
                           + ("GPU " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
                "batch": dict(BATCH), "stages": read_stage_logs(self.work, self.trained_stages), **notes}

    def write_segments(self, command: str) -> list[dict]:
        segments = self.earlier_segments + [self.segment(command)]
        (self.out / SEGMENTS_NAME).write_text(json.dumps({"segments": segments}, indent=1))
        return segments

    def evaluate_and_describe(self, limit: int, command: str) -> dict:
        """Record this run in the folder's training.json, score the written checkpoint and write its card."""
        self.write_segments(command)
        return describe(self.out, limit)


def describe(out: Path, limit: int) -> dict:
    """Score a written checkpoint folder with the evaluation suite (held-out items, HELDOUT_SEED) and write
    its model card and eval.json from the results and the folder's training.json."""
    from ..eval.suites import evaluate, format_table
    from ..pipeline import HydraPipeline
    from .card import write_model_card

    pipe = HydraPipeline.from_pretrained(out, device="cpu", precision="fp32")
    results = evaluate(pipe, limit=limit, seed=HELDOUT_SEED)
    results["checkpoint"] = str(out)
    print(format_table(results), flush=True)
    segments = json.loads((Path(out) / SEGMENTS_NAME).read_text())["segments"]
    write_model_card(Path(out), pipe.config, results, segments)
    return results


def _token_accuracy(predicted: torch.Tensor, labels: torch.Tensor, prefix: str) -> dict[str, float]:
    """Per-token classes (data.token_labels) predicted vs true: the share of object tokens given an object
    class of the right colour, and of the right shape."""
    n_colours, objects = len(data.COLOR_NAMES), labels > 0
    parts = {"colour": lambda c: (c - 1) % n_colours, "shape": lambda c: (c - 1) // n_colours}
    return {f"{prefix}_{name}": float(((part(predicted) == part(labels)) & (predicted > 0))[objects].float().mean())
            for name, part in parts.items()}


def _split(batch: int, ratio: tuple[int, int, int]) -> tuple[int, int, int]:
    total = sum(ratio)
    text, und = round(batch * ratio[0] / total), round(batch * ratio[1] / total)
    return text, und, batch - text - und


def _positive_values(parser: argparse.ArgumentParser, items: list[str], flag: str, key: str, value: str,
                     names: list[str]) -> dict[str, float]:
    """NAME=X arguments (X > 0, NAME among `names`) as a dict; anything else is a usage error."""
    out = {}
    for item in items:
        name, _, number = item.partition("=")
        try:
            number = float(number)
        except ValueError:
            number = -1.0
        if name not in names or not number > 0:
            parser.error(f"{flag} takes {key}={value} with {key} in {names} and {value} > 0, got {item!r}")
        out[name] = number
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/tiny"), help="stage outputs, logs, resumable state")
    parser.add_argument("--out", type=Path, default=Path("assets/hydra-tiny"), help="the checkpoint folder to write")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-size", type=int, default=6000, help="ShapesWorld scenes rendered for training")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--eval-limit", type=int, default=60,
                        help="samples per evaluation suite for the model card; 0: write the checkpoint and its "
                             "training.json only (evaluate and describe it later with --describe)")
    parser.add_argument("--steps", nargs="*", default=[], metavar="STAGE=N", help="override a stage's step count")
    parser.add_argument("--batch", nargs="*", default=[], metavar="KIND=N",
                        help=f"override a batch size, KIND in {sorted(BATCH)} (tok: both tokenizer stages, "
                             "umm: the unified stages)")
    parser.add_argument("--save-every", type=int, default=50, help="steps between resumable states")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering the scene pool")
    parser.add_argument("--until", choices=BUILD_ORDER, default=None,
                        help="stop after this stage (no checkpoint); e.g. to run a stage in a second process")
    parser.add_argument("--init-from", type=Path, default=None, metavar="DIR",
                        help="continue this checkpoint folder instead of building from nothing (runs --stages)")
    parser.add_argument("--stages", nargs="+", default=["umm3"], choices=CONTINUABLE,
                        help="with --init-from: the stages to run again, in order (text: the LLM on text-only "
                             "conversations; tok2: the pixel decoder alone, the encoder and its latents unchanged; "
                             "umm*: the unified stages)")
    parser.add_argument("--lr", nargs="*", default=[], metavar="GROUP=RATE",
                        help=f"override a parameter group's learning rate in every stage that trains it, GROUP in "
                             f"{sorted(GROUPS)}")
    parser.add_argument("--flow-time-loc", type=float, nargs="+", default=None, metavar="MU",
                        help="with --init-from: train the flow on t = sigmoid(N(MU, 1)) from now on (the "
                             "checkpoint's config keeps the new value); 0 centres t at 0.5, larger MU means noisier; "
                             "several values: an equal mixture")
    parser.add_argument("--latent-norm", choices=LATENT_NORMS, default=None,
                        help="the flow's latent space: 'global' (one mean and std, the paper's) or 'pca' (whitened "
                             "along the latents' principal axes); with --init-from, 'pca' converts a 'global' "
                             "checkpoint, re-expressing its flow head's output layer in the new space")
    parser.add_argument("--whiten-floor", type=float, default=None, metavar="F",
                        help="with --latent-norm pca: each principal direction is scaled by sqrt(variance + F x the "
                             "largest variance) (default 1e-3: every used direction at unit variance; larger F keeps "
                             "more of the spread, so the large directions still emerge first)")
    parser.add_argument("--image-positions", type=float, nargs="?", const=0.1, default=0.0, metavar="SCALE",
                        help="with --init-from: add learned 2D position embeddings to the image tokens' LLM inputs "
                             "if the checkpoint has none, started from DiT's 2D sin-cos table times SCALE (default "
                             "0.1, a nudge; 1 is DiT's full table)")
    parser.add_argument("--flow-latent-input", action="store_true",
                        help="the flow head also reads the noisy latent z_t through a zero-initialised linear skip "
                             "(not in the paper; unified/flow_head.py); with --init-from, added if the checkpoint has none")
    parser.add_argument("--llm-layers", type=int, default=None, metavar="N",
                        help="with --init-from: deepen the LLM to N layers by block expansion (each "
                             "new layer a copy of the one before with its output projections zeroed, so the model "
                             "starts computing what it did; LLaMA Pro)")
    parser.add_argument("--new-layer-lr", type=float, default=None, metavar="RATE",
                        help="with --llm-layers: the new layers' learning rate in the unified stages (default: the LLM's)")
    parser.add_argument("--teacher-loss", choices=TEACHER_LOSSES, default=None,
                        help="the semantic teacher's per-token loss: 'balanced' (the default and the bundled model's: "
                             "background and object tokens weigh the same, so the teacher learns shapes) or 'mean' over "
                             "all tokens (most are background: the teacher learns colours and not shapes)")
    parser.add_argument("--qa-mix", choices=data.QA_MIXES, default=data.DEFAULT_QA_MIX,
                        help="how the unified stages draw an image's 1-3 questions: 'questions' (the default, uniformly "
                             "among the scene's questions: count 3 of 8, exist 2, colour, shape, relation 1 each) or "
                             "'types' (uniformly among question types, the VQA suite's shares) or 'types_places' ('types' "
                             "with a sixth, training-only type: \"where is the red circle?\" answered with its 3x3 place), "
                             "'places_first' (every conversation opens with such a place question) or "
                             "'types_places_dense' ('types_places' with captions naming each object's place); "
                             "'places_chain', 'places_chain_relations' and 'places_chain_compared' answer relation "
                             "questions by way of both objects' places (hydra_core/train/data.py)")
    parser.add_argument("--gen-shape-weight", nargs="*", default=[], metavar="SHAPE=W",
                        help="the unified stages draw generation targets showing SHAPE W times as often (a scene "
                             f"weighs its largest shape's W, others 1), SHAPE in {list(sw.SHAPES)}; e.g. circle=3")
    parser.add_argument("--semantic-noise", type=float, default=None, metavar="T",
                        help="building from nothing: train the tokenizer with Sem-ViT reading its latent noised to "
                             "t ~ U(0, T) (HydraTokConfig.semantic_noise; 0, the default, is the paper's clean latent)")
    parser.add_argument("--describe", type=Path, default=None, metavar="DIR",
                        help="only evaluate the checkpoint folder DIR and write its model card (no training)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for item in args.steps:
        stage, _, count = item.partition("=")
        if stage not in STEPS or not count.isdigit():
            parser.error(f"--steps takes STAGE=N with STAGE in {sorted(STEPS)}, got {item!r}")
        STEPS[stage] = int(count)
    for item in args.batch:
        kind, _, size = item.partition("=")
        if kind not in BATCH or not size.isdigit():
            parser.error(f"--batch takes KIND=N with KIND in {sorted(BATCH)}, got {item!r}")
        BATCH[kind] = int(size)
    for group, rate in _positive_values(parser, args.lr, "--lr", "GROUP", "RATE", sorted(GROUPS)).items():
        for name, stage in STAGES.items():
            if group in stage.groups:
                STAGES[name] = dataclasses.replace(stage, groups=stage.groups | {group: rate})
    gen_shape_weights = _positive_values(parser, args.gen_shape_weight, "--gen-shape-weight", "SHAPE", "W",
                                         list(sw.SHAPES))
    if args.describe is not None:
        describe(args.describe, args.eval_limit or 60)
        return
    if args.latent_norm == "global" and args.init_from is not None:
        parser.error("--latent-norm global: a checkpoint keeps its own latent space; only 'pca' converts one")
    if args.flow_time_loc is not None and args.init_from is None:
        parser.error("--flow-time-loc changes a checkpoint's recipe: use it with --init-from")
    if args.semantic_noise is not None and (args.init_from is not None or not 0 <= args.semantic_noise <= 1):
        parser.error("--semantic-noise takes a number in [0, 1] and trains a tokenizer: build from nothing")
    if args.llm_layers is not None and args.init_from is None:
        parser.error("--llm-layers deepens a checkpoint's LLM: use it with --init-from")
    if args.new_layer_lr is not None and (args.llm_layers is None or not args.new_layer_lr > 0):
        parser.error("--new-layer-lr takes a rate > 0 and goes with --llm-layers")
    if args.teacher_loss is not None and args.init_from is not None:
        parser.error("--teacher-loss trains a teacher: build from nothing")
    builder = Builder(args.work, args.out, args.scale, args.seed, args.pool_size, args.init_from,
                      workers=args.workers, save_every=args.save_every, whiten=args.latent_norm == "pca",
                      image_positions=args.image_positions, teacher_loss=args.teacher_loss or DEFAULT_TEACHER_LOSS,
                      flow_latent_input=args.flow_latent_input, qa_mix=args.qa_mix, llm_layers=args.llm_layers,
                      new_layer_lr=args.new_layer_lr, gen_shape_weights=gen_shape_weights)
    if args.whiten_floor is not None:
        if args.latent_norm != "pca" or args.whiten_floor < 0:
            parser.error("--whiten-floor takes a number >= 0 and goes with --latent-norm pca")
        builder.config.latent_whiten_floor = args.whiten_floor
    if args.semantic_noise is not None:
        builder.config.tokenizer.semantic_noise = args.semantic_noise
    if args.flow_time_loc is not None:
        locs = args.flow_time_loc
        builder.config.flow_time_loc = locs[0] if len(locs) == 1 else locs  # the model's config: flow_loss reads it, the checkpoint keeps it
    if not builder.build(until=args.until, stages=tuple(args.stages)) or not builder.state.is_main_process:
        return
    command = "python -m hydra_core.train " + " ".join(argv or sys.argv[1:])
    if args.eval_limit:
        builder.evaluate_and_describe(args.eval_limit, command)
    else:
        builder.write_segments(command)
