"""The settings every training job shares (MLLM, decoder): steps and optimiser, workers, checkpoints, tracking."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainSettings:
    """The optimisation loop."""

    steps: int = 200
    """Optimiser steps in all; a resumed run continues to this count."""
    batch_size: int = 8
    """Clips per step per worker."""
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 10
    """Linear warm-up from 0 to lr over this many steps, then cosine decay to lr/10 at `steps`."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    seed: int = 0
    """Seeds weights, data order and task sampling: one worker and one seed give the same weights twice."""
    log_every_steps: int = 10
    """Metrics to metrics.jsonl, Ray Train and MLflow every this many steps (and at the last)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("train.warmup_steps, train.grad_clip and train.weight_decay must be >= 0")


@dataclass
class ScalingSettings:
    """Ray Train workers."""

    num_workers: int = 1
    """Training workers (data parallel, DDP); 0 runs in the driver process (no fault tolerance)."""
    use_gpu: bool = False
    """One GPU per worker, bf16 autocast."""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves (also its torch thread count on CPU)."""
    max_failures: int = 2
    """Worker failures (an exception, a dead process) Ray Train recovers from, each from the last checkpoint."""

    def __post_init__(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"scaling.num_workers must be >= 0, got {self.num_workers}")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"scaling.cpus_per_worker must be > 0, got {self.cpus_per_worker}")


@dataclass
class CheckpointSettings:
    """When checkpoints are written and how many are kept."""

    every_steps: int = 100
    """A checkpoint every this many steps, and one at the end."""
    keep_last: int = 3
    """Complete checkpoints kept (the newest is never deleted, nor, in an MLLM run, one that eval.required_suites
    has not evaluated yet)."""

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"checkpoint.every_steps must be >= 1, got {self.every_steps}")
        if self.keep_last < 1:
            raise ValueError(f"checkpoint.keep_last must be >= 1, got {self.keep_last}")


@dataclass
class RunEvalSettings:
    """Which evaluations every checkpoint of the run owes before retention may delete it."""

    required_suites: list[str] = field(default_factory=list)
    """Eval suites (tv_align, vbench) a checkpoint needs committed results for under RUN/eval/results before
    checkpoint.keep_last may delete it; until then it is kept, and the training log says why. []: keep_last
    alone decides."""

    def __post_init__(self) -> None:
        from pipelines.evaluate.rows import SUITES

        for suite in self.required_suites:
            if suite not in SUITES:
                raise ValueError(f"eval.required_suites: unknown suite {suite!r}; known: {', '.join(SUITES)}")
        if len(set(self.required_suites)) != len(self.required_suites):
            raise ValueError(f"eval.required_suites: a suite is given twice in {list(self.required_suites)}")


@dataclass
class TrackingSettings:
    """Where metrics go besides RUN/metrics.jsonl and Ray Train."""

    mlflow_uri: str | None = None
    """MLflow tracking URI: a server (http://HOST:5000) or a local SQLite store (sqlite:///PATH/mlflow.db;
    MLflow 3 refuses file:// stores unless MLFLOW_ALLOW_FILE_STORE=true); None: no MLflow. Needs
    `pip install 'vtok[tracking]'`; checked before training starts."""
    experiment: str = "vtok"
    """MLflow experiment name."""
