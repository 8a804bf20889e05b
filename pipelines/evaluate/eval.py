"""`vtok eval`: evaluate an MLLM checkpoint (and a decoder) on a held-out shapes world, as a Ray Data job.

    prepare_eval   every check, no Ray: the checkpoints (complete, of the right kind), the held-out data (the
                   same tokenizer, ground truth, no training clip), the decoder against the MLLM, the suites
    run            read the held-out tokens -> TVAlignModels actors (the MLLM, the decoder) -> judge CPU tasks
                   -> TV-Align accuracy per category, VBench on the generated and the reconstructed videos
    commit         one results file per (checkpoint, suite) under RUN/eval/results/ (a rerun replaces it)
    compare=       a baseline checkpoint's understanding on the same clips (its model in the same actors, the
                   same pass), committed under ITS run, unless its results were made from the same data already
                   (then they are read, not recomputed)
    report         RUN/eval/report.html and report.json (pipelines/evaluate/report.py)

Rows and metric names: pipelines/evaluate/rows.py. The run is the checkpoint's run folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.evaluate.checks import MLLMCheckpoint
from pipelines.evaluate.rows import SUITES, TV_ALIGN, TV_ALIGN_METRICS, VBENCH
from vtok.errors import InputError
from vtok.eval.vbench import VBenchConfig

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """`vtok eval`: what to evaluate, on which held-out clips, with which suites, and the actors that run it."""

    checkpoint: str = "???"
    """The MLLM: a complete checkpoint (RUN/checkpoints/step_*) or a run (its latest complete one)."""
    data: str = "???"
    """Held-out token dataset (a shapes world none of whose clips trained the checkpoints), local or s3://."""
    suites: list[str] = field(default_factory=lambda: [TV_ALIGN])
    """Suites to run: tv_align (understanding, generation, reconstruction), vbench (on the generated videos)."""
    metrics: list[str] | None = None
    """TV-Align metrics; None: understanding, plus generation and reconstruction when decoder= is given."""
    decoder: str | None = None
    """A complete decoder checkpoint or run, trained on the MLLM's token mode (generation, reconstruction, vbench)."""
    compare: str | None = None
    """A baseline MLLM run or checkpoint: its understanding on the same clips, beside this one in the report."""
    limit: int | None = None
    """Evaluate only the first N held-out clips (in the dataset's order); None: all."""
    steps: int | None = None
    """The decoder's Euler sampling steps; None: its sample_steps."""
    guidance: float | None = None
    """The decoder's classifier-free guidance scale; None: its own."""
    seed: int = 0
    """Seed of the sampling noise; each clip's noise is fixed by it and the clip's sample key."""
    batch_size: int = 8
    """Clips per model actor call."""
    num_actors: int = 1
    """Model actors (each holds one copy of the MLLM and the decoder)."""
    num_gpus: float = 0.0
    """GPUs per model actor (1 on a GPU cluster); 0 runs on CPU."""
    num_cpus: float = 1.0
    """CPUs per model actor (also its torch thread count)."""
    judge_cpus: float = 1.0
    """CPUs per judge task."""
    strip: int = 4
    """Held-out prompts whose generated frames the report shows."""
    device: str = "auto"
    """The actors' torch device: "auto" (cuda when the actor sees a GPU), "cpu" or "cuda"."""
    vbench: VBenchConfig = field(default_factory=VBenchConfig)
    """VBench: dimensions, proxies, and the official package's environment."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for s3:// checkpoints, data and runs."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_actors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1 or null, got {self.steps}")
        if self.num_gpus < 0 or self.num_cpus <= 0 or self.judge_cpus <= 0:
            raise ValueError("num_gpus must be >= 0, num_cpus and judge_cpus > 0")
        if self.strip < 0:
            raise ValueError(f"strip must be >= 0, got {self.strip}")
        check_suites(self)


def check_suites(cfg: EvalConfig) -> list[str]:
    """The TV-Align metrics to measure; InputError naming the key for an unknown suite or metric, or for what
    needs decoder= without one."""
    if not cfg.suites:
        raise InputError(f"suites: empty; give one or more of {', '.join(SUITES)}")
    for suite in cfg.suites:
        if suite not in SUITES:
            raise InputError(f"suites: unknown suite {suite!r}; known: {', '.join(SUITES)}")
    if cfg.metrics is not None:
        for metric in cfg.metrics:
            if metric not in TV_ALIGN_METRICS:
                raise InputError(f"metrics: unknown TV-Align metric {metric!r}; known: {', '.join(TV_ALIGN_METRICS)}")
    metrics = list(cfg.metrics) if cfg.metrics is not None else (
        list(TV_ALIGN_METRICS) if cfg.decoder else ["understanding"])
    if cfg.decoder is None:
        needs = [m for m in metrics if m != "understanding"] + ([VBENCH] if VBENCH in cfg.suites else [])
        if needs:
            verb = "needs" if len(needs) == 1 else "need"
            raise InputError(f"decoder: not set; {', '.join(needs)} {verb} videos made from tokens: give "
                             f"decoder=DECODER_RUN (a decoder trained on the MLLM's token mode)")
    if TV_ALIGN not in cfg.suites:
        metrics = []
    elif not metrics:
        raise InputError("metrics: empty; give one or more of " + ", ".join(TV_ALIGN_METRICS))
    return sorted(set(metrics), key=TV_ALIGN_METRICS.index)


@dataclass
class EvalPlan:
    """Everything `run` needs, checked: the resolved checkpoints and the held-out clips."""

    cfg: EvalConfig
    """The config it was made from."""
    main: MLLMCheckpoint
    """The MLLM evaluated."""
    metrics: list[str]
    """TV-Align metrics to measure (empty without the tv_align suite)."""
    decoder: str | None
    """The decoder's complete checkpoint URI."""
    decoder_cfg: Any
    """Its DecoderConfig (None without a decoder)."""
    compare: MLLMCheckpoint | None
    """The baseline, if any."""
    compare_reuse: bool
    """The baseline's understanding was committed from the same data already: read it, do not recompute."""
    manifest: dict[str, Any]
    """The held-out dataset's manifest."""
    clips: list[dict[str, Any]]
    """The held-out clips evaluated, in order: sample_key, caption, attributes."""
    settings: dict[str, Any]
    """What the results are made of (RUN/eval/records/*.json)."""
    budgets: dict[str, int | None] = field(default_factory=dict)
    """Token budget per clip of each MLLM, by checkpoint URI."""


def prepare_eval(cfg: EvalConfig) -> EvalPlan:
    """Every check of the module docstring, before any Ray work: an EvalPlan, or one InputError naming the key."""
    from pipelines.decode.reconstruct import decoder_checkpoint
    from pipelines.evaluate.checks import (
        check_data_fits,
        check_decoder_pair,
        check_held_out,
        data_id,
        mllm_checkpoint,
        sample_keys,
        token_budget,
    )
    from pipelines.evaluate.rows import made_the_same_way
    from pipelines.train.data import check_manifest
    from pipelines.train.decoder_checks import check_tokens
    from schemas.checkpoint import DATA
    from vtok.eval.vbench import check_config
    from vtok.storage import read_json

    opts = cfg.storage_options or None
    metrics = check_suites(cfg)
    if VBENCH in cfg.suites:
        if cfg.vbench.python and not os.path.isfile(os.path.expanduser(cfg.vbench.python)):
            raise InputError(f"vbench.python: {cfg.vbench.python} does not exist (the interpreter of an environment "
                             f"with VBench installed)")
        check_config(cfg.vbench)
    main = mllm_checkpoint(cfg.checkpoint, "checkpoint", opts)
    compare = mllm_checkpoint(cfg.compare, "compare", opts) if cfg.compare else None
    if compare is not None and compare.uri == main.uri:
        raise InputError(f"compare={cfg.compare}: the same checkpoint as checkpoint={cfg.checkpoint}")
    if compare is not None and "understanding" not in metrics:
        raise InputError(f"compare={cfg.compare}: compares understanding, which suites/metrics leave out "
                         f"(give suites=[tv_align,...] and metrics with understanding)")
    decoder = decoder_cfg = decoder_data = None
    if cfg.decoder:
        decoder, folder, decoder_cfg = decoder_checkpoint(cfg.decoder, opts, key="decoder")
        check_decoder_pair(main, cfg.decoder, decoder_cfg)
        decoder_data = read_json(str(folder / DATA)) or {}
    manifest = check_manifest(cfg.data, opts)
    for ckpt in (main, compare):
        if ckpt is not None:
            check_data_fits(ckpt, manifest, cfg.data)
    if decoder_cfg is not None:
        check_tokens(decoder_cfg, manifest, cfg.data, where=f"decoder={cfg.decoder}")
    clips = sample_keys(cfg.data, opts, ("caption", "attributes"))[: cfg.limit]
    _check_clips(clips, cfg.data, "generation" in metrics or VBENCH in cfg.suites)
    keys = [str(c["sample_key"]) for c in clips]
    seen: dict[str, set[str]] = {}
    for key, given, record in (("checkpoint", cfg.checkpoint, main.data),
                               ("compare", cfg.compare, compare.data if compare else None),
                               ("decoder", cfg.decoder, decoder_data)):
        if record is not None:
            check_held_out(keys, key, str(given), record, cfg.data, opts, seen)
    settings = {"data": cfg.data, "data_id": data_id(manifest), "limit": cfg.limit, "clips": len(clips),
                "metrics": metrics, "decoder": decoder, "steps": cfg.steps, "guidance": cfg.guidance,
                "seed": cfg.seed, "vbench": {"dimensions": list(cfg.vbench.dimensions), "proxies": cfg.vbench.proxies}}
    reuse = compare is not None and made_the_same_way(
        compare, TV_ALIGN, {k: settings[k] for k in ("data_id", "limit", "clips")}, "understanding", opts)
    budgets = {c.uri: token_budget(c, manifest) for c in (main, compare) if c is not None}
    return EvalPlan(cfg=cfg, main=main, metrics=metrics, decoder=decoder, decoder_cfg=decoder_cfg, compare=compare,
                    compare_reuse=reuse, manifest=manifest, clips=clips, settings=settings, budgets=budgets)


def _check_clips(clips: list[dict[str, Any]], data: str, captions: bool) -> None:
    from vtok.eval.questions import parse_attributes

    if not clips:
        raise InputError(f"data={data}: no clips to evaluate")
    bare = [c["sample_key"] for c in clips if parse_attributes(c.get("attributes")) is None]
    if bare:
        raise InputError(f"data={data}: {len(bare)} clips have no attributes (TV-Align needs the shapes world's "
                         f"ground truth), e.g. sample_key {bare[0]}")
    if captions:
        mute = [c["sample_key"] for c in clips if not c.get("caption")]
        if mute:
            raise InputError(f"data={data}: {len(mute)} clips have no caption to generate from, e.g. sample_key "
                             f"{mute[0]}")


def _read(plan: EvalPlan, columns: list[str]) -> Any:
    """The evaluated held-out clips as a Ray Dataset of `columns` (those it has), tensors as ndarrays."""
    import vtok
    from pipelines.train.data import dense_tensors

    ds = vtok.read_tokens(plan.cfg.data, plan.cfg.storage_options or None)
    names = set(ds.schema().names)
    ds = ds.select_columns([c for c in columns if c in names])
    if plan.cfg.limit:
        ds = ds.limit(plan.cfg.limit)
    return ds.map_batches(dense_tensors, batch_format="pyarrow")


def _model_columns(ckpt: MLLMCheckpoint) -> list[str]:
    return ["key_tokens", "residual_features" if ckpt.tokens == "vtok" else "frame_tokens"]


def _evaluate(plan: EvalPlan, ckpt: MLLMCheckpoint, metrics: list[str], keep: frozenset[str] | None,
              compare: MLLMCheckpoint | None) -> list[dict]:
    """One Ray Data pass of `ckpt` (the decoder for generation/reconstruction, `compare` for its understanding):
    a dict per clip."""
    import ray.data

    from pipelines.evaluate.stages import TVAlignModels, judge_batch
    from pipelines.train.decoder_checks import token_columns

    cfg = plan.cfg
    videos = [m for m in metrics if m != "understanding"]
    columns = ["sample_key", "caption", "attributes", "frame_indices", *_model_columns(ckpt),
               *(_model_columns(compare) if compare else [])]
    if "reconstruction" in videos:
        columns += token_columns(plan.decoder_cfg)
    ds = _read(plan, list(dict.fromkeys(columns)))
    ds = ds.map_batches(
        TVAlignModels,
        fn_constructor_kwargs={"mllm": ckpt.uri, "metrics": metrics, "decoder": plan.decoder if videos else None,
                               "compare": compare.uri if compare else None,
                               "storage_options": cfg.storage_options or None, "steps": cfg.steps,
                               "guidance": cfg.guidance, "seed": cfg.seed, "device": cfg.device,
                               "num_threads": int(max(1, cfg.num_cpus))},
        batch_size=cfg.batch_size, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors), batch_format="numpy")
    if videos:
        ds = ds.map_batches(judge_batch, fn_kwargs={"keep": keep}, batch_size=cfg.batch_size,
                            num_cpus=cfg.judge_cpus, batch_format="numpy")
    return list(ds.iter_rows())


def _accuracy(rows: list[dict], metrics: list[str]) -> dict[str, dict[str, tuple[float, int, float, float]]]:
    import json

    from vtok.eval.tv_align import category_accuracy, merge_hits

    return {m: category_accuracy(merge_hits(*(json.loads(str(r[m])) for r in rows))) for m in metrics}


def run_eval(cfg: EvalConfig, progress: bool = True, plan: EvalPlan | None = None) -> dict[str, Any]:
    """Check (prepare_eval, unless `plan` is given), evaluate, commit and report; returns {"run", "checkpoint",
    "results" (suite -> URI), "accuracy" (metric -> category -> (value, n, lo, hi)), "vbench" (rows as
    dicts), "compare" (the baseline's run, checkpoint, results URI, reused or not), "report", "seconds"}."""
    import ray.data

    from pipelines.evaluate.report import write_eval_report
    from pipelines.evaluate.rows import commit_record, tv_align_rows, vbench_rows

    plan = plan or prepare_eval(cfg)
    opts = cfg.storage_options or None
    started = time.perf_counter()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    if not progress:
        ctx.enable_progress_bars = False
    main, fingerprint = plan.main, str(plan.manifest["fingerprint"])
    vbench = VBENCH in cfg.suites
    video_metrics = set(plan.metrics) | ({"generation", "reconstruction"} if vbench else set())
    metrics = [m for m in TV_ALIGN_METRICS if m in video_metrics or m in plan.metrics]
    strip = frozenset(str(c["sample_key"]) for c in plan.clips[: cfg.strip])
    baseline = plan.compare if plan.compare is not None and not plan.compare_reuse else None
    rows = _evaluate(plan, main, metrics, None if vbench else strip, baseline)
    logger.info("evaluated %d clips of %s with %s in %.1f s", len(rows), cfg.data, main.uri,
                time.perf_counter() - started)
    accuracy = _accuracy(rows, plan.metrics)
    results: dict[str, str] = {}
    budget = plan.budgets[main.uri]
    if plan.metrics:
        results[TV_ALIGN] = commit_record(main, TV_ALIGN, plan.settings,
                                          tv_align_rows(main, accuracy, budget, fingerprint), opts)
    vbench_found: list[Any] = []
    score_dims: dict[str, dict[str, list[str]]] = {}
    if vbench:
        videos = {m: [r[col] for r in rows] for m, col in (("generation", "generated"),
                                                          ("reconstruction", "reconstructed"))}
        vbench_found, score_dims = vbench_rows(main, videos, cfg.vbench, budget, fingerprint)
        results[VBENCH] = commit_record(main, VBENCH, plan.settings, vbench_found, opts)
    compare = _compare(plan, rows, fingerprint) if plan.compare is not None else None
    report = write_eval_report(plan, rows, accuracy, vbench_found, score_dims, compare, strip)
    seconds = time.perf_counter() - started
    logger.info("eval of %s done in %.1f s: %s", main.uri, seconds, ", ".join(results.values()))
    return {"run": main.run, "checkpoint": main.uri, "results": results, "accuracy": accuracy,
            "vbench": [dataclasses.asdict(r) for r in vbench_found], "compare": compare, "report": report,
            "seconds": seconds}


def _compare(plan: EvalPlan, rows: list[dict], fingerprint: str) -> dict[str, Any]:
    """The baseline's understanding on the same clips: read when made the same way, else from the pass's
    "compare_understanding" and committed under its run. {"run", "checkpoint", "name", "tokens", "budget",
    "results", "reused", "accuracy": category -> (value, n, lo, hi)}."""
    from pipelines.evaluate.results import read_results, results_uri
    from pipelines.evaluate.rows import commit_record, tv_align_rows

    baseline = plan.compare
    assert baseline is not None
    opts = plan.cfg.storage_options or None
    if plan.compare_reuse:
        table = read_results(baseline.run, opts).to_pylist()
        accuracy = {r["category"]: (r["value"], r["n"], r["lo"], r["hi"]) for r in table
                    if (r["checkpoint"], r["suite"], r["metric"]) == (baseline.name, TV_ALIGN, "understanding")}
        uri = results_uri(baseline.run, baseline.name, TV_ALIGN)
        logger.info("compare: %s has understanding results of the same clips: %s", baseline.uri, uri)
    else:
        accuracy = _accuracy([{"understanding": r["compare_understanding"]} for r in rows],
                             ["understanding"])["understanding"]
        settings = {**plan.settings, "metrics": ["understanding"], "decoder": None}
        uri = commit_record(baseline, TV_ALIGN, settings, tv_align_rows(
            baseline, {"understanding": accuracy}, plan.budgets[baseline.uri], fingerprint), opts)
    return {"run": baseline.run, "checkpoint": baseline.uri, "name": baseline.name, "tokens": baseline.tokens,
            "budget": plan.budgets[baseline.uri], "results": uri, "reused": plan.compare_reuse,
            "accuracy": accuracy}
