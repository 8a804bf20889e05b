"""The decoder: visual tokens -> video, a diffusers WanTransformer3DModel trained by flow matching.

    tokens --TokenAdapter--> encoder_hidden_states [B, L, text_dim] (+ mask [B, L])
    x0 [B, C, F, H, W]: pixels of frames_lowres in [-1, 1] (C = 3) or normalized VAE latents
    x_t = (1 - sigma) x0 + sigma noise,   timestep = 1000 sigma,   transformer(x_t, t, states) ~ noise - x0

Sampling integrates that velocity from pure noise with diffusers' FlowMatchEulerDiscreteScheduler (Euler,
`steps` steps); guidance g != 1 runs the null conditioning beside it: v = v_null + g (v_cond - v_null).

The Wan blocks call their cross-attention without a mask, so the decoder installs a processor on every
block's attn2 that masks the padded conditioning slots (the adapter zeroes them too): a clip's output does
not depend on how long the other clips of its batch are, nor on what padding holds. The mask of the latest
call stays set, so gradient checkpointing's recomputation in backward sees the same one.

Modes: "full" trains everything; "frozen" (WAN2.2 adapter mode) freezes the transformer and trains the adapter;
"lora" adds peft LoRA adapters on the attention projections. save_pretrained writes

    config.json              the DecoderConfig and where the transformer came from
    trainable.safetensors    the adapter (+ LoRA); never the transformer's own weights
    decoder/                 the transformer as a diffusers directory (WanTransformer3DModel.from_pretrained)

(the names of a training checkpoint, schemas.checkpoint, so from_pretrained loads a checkpoint folder too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch import nn

from schemas.checkpoint import CONFIG, DECODER_DIR, TRAINABLE
from vtok.models.decoder_adapter import Conditioning, TokenAdapter, conditioning
from vtok.models.decoder_config import DecoderConfig
from vtok.models.decoder_video import (
    TRANSFORMER_CLASS,
    check_class,
    decode_latents,
    diffusers_class,
    frames_to_pixels,
    load_vae,
    pixels_to_frames,
)
from vtok.training.losses import flow_matching_loss, flow_matching_pair, logit_normal_sigmas

FILES = dict(trainable=TRAINABLE, transformer=DECODER_DIR, config=CONFIG)
"""What save_pretrained writes into a directory."""
NUM_TRAIN_TIMESTEPS = 1000
"""timestep = sigma * NUM_TRAIN_TIMESTEPS (the scheduler's num_train_timesteps)."""


class _MaskHolder:
    """The cross-attention mask of the current call, [B, 1, 1, L] bool, shared by every block's processor."""

    mask: torch.Tensor | None = None


class MaskedCrossAttnProcessor(WanAttnProcessor):
    """WanAttnProcessor whose cross-attention ignores the padded conditioning slots (holder.mask False)."""

    def __init__(self, holder: _MaskHolder) -> None:
        super().__init__()
        self.holder = holder

    def __call__(  # type: ignore[override]
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        mask = self.holder.mask
        if attention_mask is None and mask is not None and encoder_hidden_states is not None:
            assert mask.shape[0] == hidden_states.shape[0] and mask.shape[-1] == encoder_hidden_states.shape[1], (
                f"mask {list(mask.shape)} vs states {list(encoder_hidden_states.shape)}"
            )
            attention_mask = mask
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def load_transformer(path: str | Path, key: str = "model.transformer") -> Any:
    """A WanTransformer3DModel from a local diffusers directory (float32), refusing other classes, naming `key`."""
    from diffusers import WanTransformer3DModel

    config = check_class(path, TRANSFORMER_CLASS, key)
    if config.get("image_dim") is not None or config.get("added_kv_proj_dim") is not None:
        raise ValueError(f"{key}={path}: an image-conditioned (I2V) Wan transformer; the decoder needs a T2V one")
    return WanTransformer3DModel.from_pretrained(str(path), torch_dtype=torch.float32)


def new_transformer(cfg: DecoderConfig) -> Any:
    """A WanTransformer3DModel of cfg.dit's sizes (weights from the global RNG: seed it around this call)."""
    from diffusers import WanTransformer3DModel

    dit, channels = cfg.dit, cfg.dit.channels
    if channels is None and cfg.space == "pixels":
        channels = 3
    elif channels is None and cfg.vae is not None:
        channels = int(diffusers_class(cfg.vae, "model.vae").get("z_dim", 16))
    if channels is None:
        raise ValueError("model.dit.channels must be set for model.space=latents without model.vae")
    return WanTransformer3DModel(
        patch_size=tuple(dit.patch_size), num_attention_heads=dit.heads, attention_head_dim=dit.head_dim,
        in_channels=channels, out_channels=channels, text_dim=dit.text_dim, freq_dim=dit.freq_dim,
        ffn_dim=dit.ffn_dim, num_layers=dit.layers, rope_max_seq_len=dit.rope_max_seq_len,
    )


class VTokDecoder(nn.Module):
    """A WanTransformer3DModel conditioned on VTok (or frame-sampling) tokens through a TokenAdapter."""

    def __init__(
        self, cfg: DecoderConfig, transformer_dir: str | Path | None = None, vae: Any | None = None
    ) -> None:
        super().__init__()
        path = transformer_dir if transformer_dir is not None else cfg.transformer
        self.cfg = cfg
        self.transformer_path = str(Path(path).resolve()) if path is not None else None
        self._vae = vae
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            transformer = load_transformer(path) if path is not None else new_transformer(cfg)
            tc = transformer.config
            if cfg.space == "pixels" and (tc.in_channels != 3 or tc.out_channels != 3):
                raise ValueError(f"model.transformer={path}: {tc.in_channels} input channels, pixel space needs 3")
            self.adapter = TokenAdapter(cfg, int(tc.text_dim))
            if cfg.transformer_mode != "full":
                transformer.requires_grad_(False)
            if cfg.transformer_mode == "lora":
                from peft import LoraConfig

                transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                   target_modules=list(cfg.lora_targets), init_lora_weights=True))
        self._masks = _MaskHolder()
        for block in transformer.blocks:
            block.attn2.set_processor(MaskedCrossAttnProcessor(self._masks))
        self.transformer = transformer
        self.check_grid((cfg.num_frames, cfg.height, cfg.width), "model.num_frames/height/width")

    # -- shapes --
    @property
    def patch_size(self) -> tuple[int, int, int]:
        p = self.transformer.config.patch_size
        return int(p[0]), int(p[1]), int(p[2])

    def check_grid(self, size: tuple[int, int, int], what: str) -> None:
        """Refuse frames, height or width (the transformer's input) that its patch size or RoPE cannot take."""
        p, rope = self.patch_size, int(self.transformer.config.rope_max_seq_len)
        if any(n % q for n, q in zip(size, p)):
            raise ValueError(f"{what}: [F, H, W]={list(size)} is not divisible by the transformer's "
                             f"patch_size={list(p)}")
        if max(n // q for n, q in zip(size, p)) > rope:
            raise ValueError(f"{what}: [F, H, W]={list(size)} patched to {[n // q for n, q in zip(size, p)]} "
                             f"exceeds the transformer's rope_max_seq_len={rope}")

    def _device(self) -> torch.device:
        return self.adapter.null.device

    def targets(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0 [B, C, F, H, W] in the transformer's space, frame_valid [B, F] bool or None) of a collate batch."""
        device = self._device()
        name = "frames_lowres" if self.cfg.space == "pixels" else "latents"
        x = batch.get(name)
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            raise ValueError(f"model.space={self.cfg.space} needs {name} in the shards (the decoder's target)")
        if self.cfg.space == "pixels":
            x0 = frames_to_pixels(x.to(device))  # [B, 3, T, h, w]
        else:
            x0 = x.to(device=device, dtype=torch.float32)  # [B, C, T', H', W']
            c = int(self.transformer.config.in_channels)
            if x0.shape[1] != c:
                raise ValueError(f"latents have C={x0.shape[1]} channels, model.transformer takes {c}")
        f, h, w = (int(n) for n in x0.shape[2:])
        if (h, w) != (self.cfg.height, self.cfg.width):
            raise ValueError(f"{name} are {h}x{w}, the decoder is set to model.height x model.width = "
                             f"{self.cfg.height}x{self.cfg.width}")
        self.check_grid((f, h, w), name)
        valid = batch.get(f"{name}_mask")
        return x0, (valid.to(device).bool() if isinstance(valid, torch.Tensor) else None)

    def conditioning(self, batch: Mapping[str, Any] | Conditioning) -> Conditioning:
        """A collate_tokens batch (or a Conditioning) -> the Conditioning on the model's device."""
        cond = batch if isinstance(batch, Conditioning) else conditioning(batch, self.cfg)
        return cond.to(self._device())

    # -- the model --
    def transformer_forward(
        self, x: torch.Tensor, timestep: torch.Tensor, states: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Velocity [B, C, F, H, W] at x [B, C, F, H, W], timestep [B] (0..1000), states [B, L, text_dim], mask [B, L]."""
        assert states.shape[:2] == mask.shape and x.shape[0] == states.shape[0] == timestep.shape[0]
        self._masks.mask = mask.bool()[:, None, None, :]  # [B, 1, 1, L]
        return self.transformer(x, timestep, states, return_dict=False)[0]

    def forward(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Flow-matching loss on a collate_tokens batch: {"loss", "loss_flow", "sigma_mean", "dropped", "tokens"}."""
        x0, frame_valid = self.targets(batch)  # [B, C, F, H, W], [B, F]
        cond = self.conditioning(batch)
        b, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        drop = None
        if self.training and self.cfg.cond_dropout > 0:
            drop = (torch.rand(b, generator=generator, device=gen_device) < self.cfg.cond_dropout).to(device)
        states, mask = self.adapter(cond, drop)  # [B, L, text_dim], [B, L]
        sigma = logit_normal_sigmas(b, self.cfg.logit_mean, self.cfg.logit_std, self.cfg.shift, generator, device)
        noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)
        x_t, target = flow_matching_pair(x0, noise, sigma)
        pred = self.transformer_forward(x_t, sigma * NUM_TRAIN_TIMESTEPS, states, mask)
        loss = flow_matching_loss(pred, target, frame_valid)
        return {
            "loss": loss,
            "loss_flow": loss.detach(),
            "sigma_mean": sigma.mean().detach(),
            "dropped": (drop.float().mean() if drop is not None else torch.zeros((), device=device)).detach(),
            "tokens": (cond.key_valid.sum() + cond.residual_valid.sum()).detach(),
        }

    def loss(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The same as calling the model (forward): a TrainTask's loss(model, batch) should call model(batch)."""
        return self(batch, generator)

    def velocity(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        states: torch.Tensor,
        mask: torch.Tensor,
        guidance: float = 1.0,
    ) -> torch.Tensor:
        """The (guided) velocity at x [B, C, F, H, W]: conditional at guidance 1, else null + g (cond - null)."""
        if guidance == 1.0:
            return self.transformer_forward(x, timestep, states, mask)
        b = x.shape[0]
        drop = torch.arange(2 * b, device=x.device) >= b  # [2B]: the conditional half, then the null half
        both, both_mask = self.adapter.replace_with_null(states.repeat(2, 1, 1), mask.repeat(2, 1), drop)
        v = self.transformer_forward(x.repeat(2, 1, 1, 1, 1), timestep.repeat(2), both, both_mask)
        v_cond, v_null = v.chunk(2)
        return v_null + guidance * (v_cond - v_null)

    @torch.inference_mode()
    def sample_latents(
        self,
        cond: Mapping[str, Any] | Conditioning,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        size: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        """x0 [B, C, F, H, W] in the transformer's space by Euler steps from noise (deterministic given `generator`)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        steps = steps or self.cfg.sample_steps
        guidance = self.cfg.guidance if guidance is None else guidance
        f, h, w = size or (self.cfg.num_frames, self.cfg.height, self.cfg.width)
        self.check_grid((f, h, w), "size")
        c = self.conditioning(cond)
        device = self._device()
        states, mask = self.adapter(c)
        shape = (c.batch_size, int(self.transformer.config.in_channels), f, h, w)
        x = torch.randn(shape, generator=generator, device=generator.device if generator else device).to(device)
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=self.cfg.shift)
        scheduler.set_timesteps(steps, device=device)
        for t in scheduler.timesteps:
            v = self.velocity(x, t.expand(shape[0]).to(x.dtype), states, mask, guidance)
            x = scheduler.step(v, t, x, return_dict=False)[0]
        return x

    def sample(
        self,
        cond: Mapping[str, Any] | Conditioning,
        steps: int | None = None,
        guidance: float | None = None,
        generator: torch.Generator | None = None,
        size: tuple[int, int, int] | None = None,
    ) -> torch.Tensor:
        """uint8 frames [B, T, H, W, 3] for the clips' tokens (latent space: decoded through model.vae)."""
        x = self.sample_latents(cond, steps, guidance, generator, size)
        if self.cfg.space == "pixels":
            return pixels_to_frames(x).cpu()
        return decode_latents(self.vae, x).cpu()

    @property
    def vae(self) -> Any:
        """The AutoencoderKLWan of latent space (the one passed in, else loaded from model.vae once)."""
        if self._vae is None:
            if self.cfg.vae is None:
                raise ValueError("model.vae is not set: latent-space samples need the VAE to decode")
            self._vae = load_vae(self.cfg.vae).to(self._device())
        return self._vae

    # -- state --
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every trainable parameter by name: adapter.*, LoRA's in lora mode, all of transformer.* in full mode."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor], skip_transformer: bool = False) -> None:
        """Copy `state` into the trainable parameters; names must match exactly (skip_transformer: not the
        transformer's own weights, which a full-mode save keeps in decoder/)."""
        params = {n: p for n, p in self.named_parameters() if p.requires_grad
                  and not (skip_transformer and n.startswith("transformer.") and "lora_" not in n)}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise ValueError(f"trainable state does not match the decoder: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        with torch.no_grad():
            for name, p in params.items():
                if tuple(state[name].shape) != tuple(p.shape):
                    raise ValueError(f"trainable state {name}: shape {list(state[name].shape)}, "
                                     f"the decoder has {list(p.shape)}")
                p.copy_(state[name])

    def save_pretrained(self, out_dir: str | Path, include_transformer: bool = True) -> Path:
        """Write config.json, trainable.safetensors and decoder/ (the transformer, diffusers format) to `out_dir`.

        include_transformer=False (frozen or lora mode only) records the transformer's source directory instead
        of copying a large frozen model; from_pretrained then loads it from there.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        full = self.cfg.transformer_mode == "full"
        if not include_transformer and (full or self.transformer_path is None):
            raise ValueError("save_pretrained(include_transformer=False) needs a frozen or lora transformer "
                             "loaded from model.transformer")
        trainable = {n: t.contiguous() for n, t in self.trainable_state_dict().items()
                     if not (full and n.startswith("transformer."))}
        save_file(trainable, str(out / FILES["trainable"]), metadata={"format": "pt"})
        if include_transformer:
            save_transformer(self.transformer, out / FILES["transformer"])
        config = {"decoder": asdict(self.cfg), "transformer_path": self.transformer_path,
                  "transformer_included": include_transformer}
        (out / FILES["config"]).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, vae: Any | None = None) -> VTokDecoder:
        """The decoder save_pretrained wrote (a training checkpoint folder of the decoder job as well)."""
        from safetensors.torch import load_file

        root = Path(path)
        if not (root / FILES["config"]).is_file():
            raise ValueError(f"decoder={path}: no {FILES['config']}; not a saved decoder")
        config = json.loads((root / FILES["config"]).read_text())
        cfg = DecoderConfig(**config["decoder"])
        inside = root / FILES["transformer"]
        model = cls(cfg, inside if inside.is_dir() else config["transformer_path"], vae=vae)
        model.transformer_path = config.get("transformer_path")
        model.load_trainable_state_dict(load_file(str(root / FILES["trainable"])),
                                        skip_transformer=cfg.transformer_mode == "full")
        return model


def save_transformer(transformer: Any, out_dir: Path) -> None:
    """The transformer as a plain diffusers directory: in lora mode its base weights (peft's wrappers undone)."""
    if not getattr(transformer, "_hf_peft_config_loaded", False):
        transformer.save_pretrained(out_dir, safe_serialization=True)
        return
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k.replace(".base_layer.", "."): v.detach().contiguous()
             for k, v in transformer.state_dict().items() if ".lora_" not in k}
    transformer.save_config(out_dir)
    save_file(state, str(out_dir / SAFETENSORS_WEIGHTS_NAME), metadata={"format": "pt"})
