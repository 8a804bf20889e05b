"""MLLMConfig: the MLLM's settings, importable without torch (job configs and the CLI read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

LLM_MODES = ("frozen", "lora", "full")
TOKEN_KINDS = ("vtok", "frame_sampling")



@dataclass
class MLLMConfig:
    """The MLLM: which LM and how it trains, which visual tokens it reads, and the task weights."""

    llm: str | None = None
    """HF causal LM directory (local); None: the caller passes one (tests and the demo: save_tiny_llm)."""
    llm_mode: str = "lora"
    """"frozen" (only the VTok parts train), "lora" (+ LoRA adapters on the attention projections) or "full"."""
    lora_rank: int = 8
    """LoRA rank r."""
    lora_alpha: float = 16.0
    """LoRA scaling alpha (the update is scaled by alpha / r)."""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get LoRA adapters (the attention projections of Llama/Qwen-style LMs)."""
    tokens: str = "vtok"
    """"vtok" (S key + R residual tokens) or "frame_sampling" (the baseline: S tokens of each frame)."""
    frames: int | None = None
    """Baseline only: K evenly spaced frames per clip (an equal token budget); None = all T frames."""
    projector_hidden: int | None = None
    """Hidden width of the projector MLP D -> H; None = the LM's width H."""
    g_phi_hidden: int | None = None
    """Hidden width of g_phi D -> D; None = D."""
    max_time_steps: int = 64
    """Largest time index embedded: R for VTok, the frame count - 1 for the baseline."""
    understanding_weight: float = 1.0
    """Weight of the answer cross-entropy; 0 switches understanding off."""
    generation_weight: float = 1.0
    """Weight of the visual-token regression; 0 switches generation off."""
    cosine_weight: float = 1.0
    """Within generation: MSE + cosine_weight * (1 - cos)."""
    seed: int = 0
    """Seed of the new parts' initial weights (projector, embeddings, head, g_phi, LoRA)."""

    def __post_init__(self) -> None:
        if self.llm_mode not in LLM_MODES:
            raise ValueError(f"model.llm_mode must be one of {LLM_MODES}, got {self.llm_mode!r}")
        if self.tokens not in TOKEN_KINDS:
            raise ValueError(f"model.tokens must be one of {TOKEN_KINDS}, got {self.tokens!r}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"model.frames must be >= 1 or null, got {self.frames}")
        if self.understanding_weight < 0 or self.generation_weight < 0 or self.cosine_weight < 0:
            raise ValueError("model.understanding_weight, generation_weight and cosine_weight must be >= 0")
        if self.understanding_weight == 0 and self.generation_weight == 0:
            raise ValueError(
                "model.understanding_weight and model.generation_weight are both 0: nothing to train"
            )
        if self.lora_rank < 1 or self.max_time_steps < 1:
            raise ValueError("model.lora_rank and model.max_time_steps must be >= 1")
