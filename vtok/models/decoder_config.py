"""DecoderConfig: the token -> video decoder's settings, importable without torch (job configs and the CLI read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

TRANSFORMER_MODES = ("frozen", "lora", "full")
SPACES = ("pixels", "latents")
TOKEN_KINDS = ("vtok", "frame_sampling")
RESIDUAL_COLUMNS = ("features", "tokens")


@dataclass
class DiTSizes:
    """A WanTransformer3DModel built from scratch (model.transformer unset): the toy-scale sizes."""

    heads: int = 2
    """Attention heads."""
    head_dim: int = 12
    """Channels per head (a multiple of 6 keeps WAN's 3-axis RoPE split even); width = heads * head_dim."""
    layers: int = 2
    """Transformer blocks."""
    ffn_dim: int = 64
    """Feed-forward hidden width."""
    text_dim: int = 32
    """Width of encoder_hidden_states, i.e. of the adapter's output."""
    freq_dim: int = 32
    """Sinusoidal timestep embedding width."""
    patch_size: list[int] = field(default_factory=lambda: [1, 4, 4])
    """(t, h, w) patch of the input video: its frames, height and width must be multiples of it."""
    channels: int | None = None
    """Input and output channels; None: 3 in pixel space, the VAE's z_dim in latent space."""
    rope_max_seq_len: int = 64
    """RoPE table length: must cover the patched frames, height and width."""

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"model.dit.patch_size must be 3 positive ints, got {self.patch_size}")
        if min(self.heads, self.head_dim, self.layers, self.ffn_dim, self.text_dim, self.freq_dim) < 1:
            raise ValueError("model.dit.heads, head_dim, layers, ffn_dim, text_dim and freq_dim must be >= 1")


@dataclass
class DecoderConfig:
    """The decoder: which transformer and how it trains, which tokens condition it, flow matching and sampling."""

    transformer: str | None = None
    """Diffusers WanTransformer3DModel directory (local); None: a new one of model.dit's sizes (seeded)."""
    transformer_mode: str = "full"
    """"frozen" (only the adapter trains: WAN2.2 adapter mode), "lora" (+ LoRA on attention) or "full"."""
    lora_rank: int = 8
    """LoRA rank r (transformer_mode=lora)."""
    lora_alpha: float = 8.0
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """Modules of the Wan attention blocks (self and cross) that get LoRA adapters."""
    dit: DiTSizes = field(default_factory=DiTSizes)
    """Sizes of a transformer built from scratch; ignored when model.transformer is set."""
    space: str = "pixels"
    """"pixels" (frames_lowres, toy scale) or "latents" (VAE latents, real scale)."""
    vae: str | None = None
    """Diffusers AutoencoderKLWan directory: decodes latent-space samples to frames (space=latents)."""
    tokens: str = "vtok"
    """"vtok" (S key + R residual tokens) or "frame_sampling" (the baseline: S tokens of each frame)."""
    frames: int | None = None
    """Baseline only: K evenly spaced frames per clip (an equal token budget); None = all T frames."""
    residual: str = "features"
    """VTok residual column: "features" (residual_features [r*r*R, D]) or "tokens" (residual_tokens [r*r*R, D'])."""
    token_dim: int | None = None
    """Width D of key / frame tokens (the adapter's input); None: the job sets it from the data."""
    residual_dim: int | None = None
    """Width of the residual column; None = token_dim."""
    num_key: int | None = None
    """S, the key tokens per clip (grid cells embedded); None: the job sets it from the data."""
    residual_grid: int | None = None
    """r of the data's tokenizer.residual_grid (r*r residual tokens per step, each cell embedded); None = 1."""
    max_time_steps: int = 64
    """Largest time index embedded: R for VTok, the frame count - 1 for the baseline."""
    adapter_hidden: int | None = None
    """Hidden width of the adapter's token MLP; None = the transformer's text_dim."""
    null_tokens: int = 4
    """Length of the learned null conditioning (classifier-free guidance's unconditional input)."""
    cond_dropout: float = 0.1
    """Training: probability that a clip's conditioning is replaced by the null tokens."""
    shift: float = 1.0
    """Timestep shift sigma' = shift * s / (1 + (shift - 1) * s), in training and sampling (WAN: 3-5)."""
    logit_mean: float = 0.0
    """Training sigmas are sigmoid(N(logit_mean, logit_std)) (logit-normal), then shifted."""
    logit_std: float = 1.0
    """See logit_mean."""
    num_frames: int = 8
    """Frames of a sample in the transformer's space: T of frames_lowres, or T' of the latents."""
    height: int = 32
    """Height of a sample in the transformer's space (h of frames_lowres, H' of the latents)."""
    width: int = 32
    """Width of a sample in the transformer's space (w of frames_lowres, W' of the latents)."""
    sample_steps: int = 20
    """Euler steps when sampling (the default of sample())."""
    guidance: float = 1.0
    """Classifier-free guidance scale when sampling (the default of sample()); 1 = no guidance."""
    seed: int = 0
    """Seed of the new parts' initial weights (adapter, null tokens, LoRA, a transformer from scratch)."""

    def __post_init__(self) -> None:
        if isinstance(self.dit, dict):
            self.dit = DiTSizes(**self.dit)
        if self.transformer_mode not in TRANSFORMER_MODES:
            raise ValueError(
                f"model.transformer_mode must be one of {TRANSFORMER_MODES}, got {self.transformer_mode!r}"
            )
        if self.space not in SPACES:
            raise ValueError(f"model.space must be one of {SPACES}, got {self.space!r}")
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"model.tokens must be one of {TOKEN_KINDS}, got {self.tokens!r}")
        if self.residual not in RESIDUAL_COLUMNS:
            raise ValueError(f"model.residual must be one of {RESIDUAL_COLUMNS}, got {self.residual!r}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"model.frames must be >= 1 or null, got {self.frames}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"model.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.shift <= 0 or self.logit_std <= 0:
            raise ValueError("model.shift and model.logit_std must be > 0")
        for name in ("lora_rank", "max_time_steps", "null_tokens", "num_frames", "height", "width", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("token_dim", "residual_dim", "num_key", "residual_grid", "adapter_hidden"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"model.{name} must be >= 1 or null, got {value}")

    @property
    def residual_column(self) -> str:
        """The shards' column the residual slots read."""
        return "residual_features" if self.residual == "features" else "residual_tokens"
