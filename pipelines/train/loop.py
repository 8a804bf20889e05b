"""The training loop every vtok job runs on each Ray Train worker: setup, resume, loop, checkpoint.

A job plugs in a `TrainTask` (the model, how a batch becomes inputs, the losses, what goes into a
checkpoint); this module owns everything else, the same for the MLLM and the decoder:

- resume: every worker loads the latest COMPLETE checkpoint of the run (RUN/checkpoints/step_*/ with its
  marker), whatever restarted it: a rerun of the command after the driver died, or Ray Train restarting
  a failed worker group (FailureConfig). Weights, optimiser, scheduler, RNG states and the number of
  batches consumed come back, so the run continues at the next step and ends at `train.steps`.
- data: the worker's shard of the token dataset (get_dataset_shard), epoch after epoch; a resumed run
  skips the batches it already consumed, so with one worker it sees exactly the batches an uninterrupted
  run would.
- rank 0 writes checkpoints (retention after each: pipelines.train.retention) and metrics
  (RUN/metrics.jsonl, MLflow) every `log_every_steps`; Ray Train's
  report gets the latest metrics at each checkpoint, where it is also the barrier that keeps the workers
  in step. Not more often: each `ray.train.report` waits for the controller's poll (every 2 s,
  RAY_TRAIN_HEALTH_CHECK_INTERVAL_S), which made a 280-step test run spend 150 of its 170 s reporting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.train.config import CheckpointSettings, TrainSettings
from pipelines.train.metrics import MetricsLog
from schemas.checkpoint import OPTIMIZER_META, OPTIMIZER_TENSORS, STATE
from vtok.storage import join

logger = logging.getLogger(__name__)


class TrainTask(Protocol):
    """What a training job plugs into the shared loop; it is shipped to every worker."""

    def build(self, device: Any) -> Any:
        """The model on `device`; its parameters with requires_grad are what the optimiser trains."""

    def collate(self, batch: dict[str, Any], epoch: int) -> Any:
        """A numpy batch of token rows -> the model's inputs (deterministic in (batch, epoch))."""

    def loss(self, model: Any, inputs: Any) -> dict[str, Any]:
        """{"loss": scalar tensor to minimise, other scalars to log}; may hold "tokens": tokens in the batch."""

    def checkpoint_payload(
        self, model: Any
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """What to save: (safetensors files: name -> tensors, JSON files: name -> value, dirs: name -> local
        folder, files: name -> a local file the model wrote itself)."""

    def restore(self, model: Any, loaded: Any) -> None:
        """Put a loaded checkpoint's weights back into `model`."""


@dataclass
class LoopSpec:
    """Everything a worker needs besides the task: shipped in train_loop_config."""

    run_uri: str
    train: TrainSettings
    checkpoint: CheckpointSettings
    storage_options: dict[str, Any] | None = None
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    mlflow_uri: str | None = None
    experiment: str = "vtok"
    run_name: str = ""
    params: dict[str, Any] | None = None
    """Flattened config, logged to MLflow as the run's parameters."""
    protect_steps: tuple[int, ...] = ()
    """Checkpoint steps retention must never delete."""
    required_suites: tuple[str, ...] = ()
    """Eval suites every checkpoint needs committed results for before retention may delete it."""


def lr_factor(step: int, settings: TrainSettings) -> float:
    """Linear warm-up to 1 over warmup_steps, then cosine decay to 0.1 at `steps` (step counts from 0)."""
    if settings.warmup_steps and step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _batches(shard: Any, batch_size: int, skip: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(epoch, numpy batch) forever, epoch after epoch, the first `skip` batches left out (a resume)."""
    epoch, seen = 0, 0
    while True:
        got = False
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True):
            got = True
            seen += 1
            if seen > skip:
                yield epoch, batch
        if not got:
            raise ValueError(f"the training split has fewer than train.batch_size={batch_size} clips per worker")
        epoch += 1


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: setup, resume, loop, checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    from vtok.training.checkpoint import latest_complete, load_checkpoint, save_checkpoint
    from vtok.training.train_state import (
        load_optimizer_state,
        load_scheduler_state,
        optimizer_state_to_tensors,
        rng_state,
        scheduler_state_to_json,
        set_rng_state,
    )

    task: TrainTask = config["task"]
    spec: LoopSpec = config["spec"]
    settings = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # As many torch threads as CPUs reserved: more only fight over the same cores (4x slower measured on 2).
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    torch.manual_seed(settings.seed)
    device = ray.train.torch.get_device()
    model = task.build(device)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "the task's model has no trainable parameters"
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, settings))

    step, consumed = 0, 0
    latest = latest_complete(spec.run_uri, spec.storage_options)
    if latest is not None:
        loaded = load_checkpoint(latest.uri, spec.storage_options)
        task.restore(model, loaded)
        state = loaded.json_files[STATE]
        load_optimizer_state(optimizer, loaded.tensors[OPTIMIZER_TENSORS], loaded.json_files[OPTIMIZER_META])
        load_scheduler_state(scheduler, state["scheduler"])
        set_rng_state(state["rng"])
        step, consumed = int(state["step"]), int(state["batches_consumed"])
    if world > 1:
        model = ray.train.torch.prepare_model(model)
    inner = model.module if hasattr(model, "module") else model

    log = MetricsLog(spec.run_uri, spec.storage_options, enabled=rank == 0, resume_step=step,
                     mlflow_uri=spec.mlflow_uri, experiment=spec.experiment, run_name=spec.run_name,
                     params=spec.params)
    data = _batches(ray.train.get_dataset_shard("train"), settings.batch_size, skip=consumed)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if spec.use_gpu else _null()
    while step < settings.steps:
        _injected_fault(spec.run_uri, step + 1, rank)
        started = time.perf_counter()
        epoch, batch = next(data)
        inputs = task.collate(batch, epoch)
        model.train()
        with autocast:
            out = task.loss(model, inputs)
        out["loss"].backward()
        if settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        step, consumed = step + 1, consumed + 1
        elapsed = time.perf_counter() - started
        record = {"step": step, "epoch": epoch, "lr": lr, "step_time_s": elapsed,
                  **{k: float(v) for k, v in out.items() if k != "tokens"}}
        tokens = float(out.get("tokens", 0)) * world
        record["tokens_per_s"] = tokens / elapsed if elapsed > 0 else 0.0
        record["samples_per_s"] = settings.batch_size * world / elapsed if elapsed > 0 else 0.0
        log.add(record)
        last = step == settings.steps
        if step % settings.log_every_steps == 0 or last:
            log.flush()
        if step % spec.checkpoint.every_steps == 0 or last:
            if rank == 0:
                tensors, json_files, dirs, files = task.checkpoint_payload(inner)
                opt_tensors, opt_meta = optimizer_state_to_tensors(optimizer)
                tensors = {**tensors, OPTIMIZER_TENSORS: opt_tensors}
                state = {"step": step, "epoch": epoch, "batches_consumed": consumed,
                         "scheduler": scheduler_state_to_json(scheduler), "rng": rng_state()}
                json_files = {**json_files, OPTIMIZER_META: opt_meta, STATE: state}
                save_checkpoint(spec.run_uri, step, tensors=tensors, json_files=json_files, dirs=dirs, files=files,
                                storage_options=spec.storage_options)
                _retain(spec, record)
                log.flush()
            ray.train.report({**{k: v for k, v in record.items() if isinstance(v, (int, float))}, "checkpointed": 1})
    log.close()


def _retain(spec: LoopSpec, record: dict[str, Any]) -> None:
    """Retention after a save; the step's metrics record says how many checkpoints are kept and, when the eval
    suites keep more than checkpoint.keep_last, why (also logged)."""
    from pipelines.train.retention import retain_evaluated

    done = retain_evaluated(spec.run_uri, spec.checkpoint.keep_last, spec.required_suites, spec.protect_steps,
                            spec.storage_options)
    record["checkpoints_kept"] = len(done.kept)
    if spec.required_suites:
        record["checkpoints_awaiting_eval"] = len(done.awaiting)
    if done.note:
        record["retention"] = done.note
        logger.warning("%s", done.note)


FAULT_ENV = "VTOK_TRAIN_FAULT_AT_STEP"
"""Tests set it to N: rank 0 raises once, before step N, to prove a failed worker resumes from a checkpoint."""


def _injected_fault(run_uri: str, step: int, rank: int) -> None:
    import os

    from vtok.storage import get_fs

    at = os.environ.get(FAULT_ENV)
    if rank != 0 or not at or int(at) != step:
        return
    fs, marker = get_fs(join(run_uri, f".fault-injected-{step}"))
    if fs.exists(marker):
        return
    fs.pipe_file(marker, b"1")
    raise RuntimeError(f"injected worker fault before step {step} ({FAULT_ENV})")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
