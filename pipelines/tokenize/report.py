"""The run report: report.json (numbers) and report.html (charts) next to the token shards.

Dataset-wide counts come from the manifest, so a resumed run still reports the whole dataset;
timings, stage busy times and the tokens-per-clip distribution cover the clips this run processed.
The HTML page is self-contained (inline SVG, no scripts, no external assets), so it opens from an
object store, an e-mail attachment or a laptop without network. The config is stored with
credentials redacted: a report is meant to be shared.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.report_html import environment, fmt_bytes, fmt_s, png_data_uri
from pipelines.tokenize.report_page import render_html, sizing_advice
from schemas.layout import REPORT_FILE, REPORT_HTML
from schemas.tokens import num_residual_tokens, residual_grid_of, vtok_formula
from vtok.secrets import mask_text, redact
from vtok.storage import get_fs, join, read_json, write_bytes_atomic, write_json

if TYPE_CHECKING:
    from pipelines.tokenize.pipeline import TokenizeSummary

REPORT_VERSION = 2
# Sections that describe one run's work (the rest describe the whole dataset). A run that found nothing to
# do keeps the previous working run's, so the page never shows an 8 ms "run" in place of the real one.
RUN_SECTIONS = ("time", "stages", "throughput", "sizing")
MAX_SHARD_ROWS = 500
"""Shards listed on the page; the manifest lists them all."""
RUN_TOKEN_FIELDS = ("vtok_per_clip", "frame_sampling_per_clip", "frames_per_clip", "vtok_total_this_run",
                    "frame_sampling_total_this_run", "histogram")

@dataclass
class ReportPaths:
    """Where a report was written."""

    json: str
    """URI of report.json."""
    html: str
    """URI of report.html."""


def _dist(values: list[float]) -> dict[str, float]:
    """count/mean/min/p50/p90/max of a list (zeros when empty, so readers need no special case)."""
    if not values:
        return {"count": 0, "mean": 0.0, "min": 0.0, "p50": 0.0, "p90": 0.0, "max": 0.0}
    a = np.asarray(values, dtype=np.float64)
    return {
        "count": int(a.size),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "max": float(a.max()),
    }


def _histogram(values: list[int]) -> list[list[int]]:
    """[[value, count], ...] sorted by value: token counts are integers, so exact counts, no binning."""
    uniq, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return [[int(v), int(c)] for v, c in zip(uniq, counts)]


def _rate(count: float, seconds: float) -> float:
    return float(count / seconds) if seconds > 0 else 0.0


def _error_samples(
    output: str, manifest: dict[str, Any], storage_options: dict[str, Any] | None, per_reason: int = 3,
    max_files: int = 20,
) -> dict[str, list[dict[str, str]]]:
    """A few quarantine rows per reason, so the report shows what went wrong, not only how often."""
    import pyarrow.parquet as pq

    samples: dict[str, list[dict[str, str]]] = {}
    # Bounded: a dataset with millions of failures must not make the report read them all.
    for entry in manifest.get("quarantine", [])[:max_files]:
        fs, path = get_fs(join(output, entry["file"]), storage_options)
        with fs.open(path, "rb") as f:
            rows = pq.read_table(f, columns=["source_uri", "reason", "message"]).to_pylist()
        for row in rows:
            bucket = samples.setdefault(row["reason"], [])
            if len(bucket) < per_reason:
                bucket.append({"source_uri": mask_text(row["source_uri"]),
                               "message": mask_text(row["message"])[:500]})
    return dict(sorted(samples.items()))


def build_report(
    summary: TokenizeSummary, config: Any, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report.json document for one tokenize run."""

    stats = summary.stats
    manifest = summary.manifest
    grid_tokens = int(summary.key_tokens_per_clip)
    stride = int(manifest.get("tokenizer", {}).get("residual_stride", 1))
    residual_grid = residual_grid_of(manifest.get("tokenizer"))
    frames = [int(t) for t in stats.frames_per_clip]
    vtok_per_clip = [grid_tokens + num_residual_tokens(t, stride, residual_grid) for t in frames]
    fs_per_clip = [grid_tokens * t for t in frames]
    clips_this_run = len(stats.decode_s)
    encoded = len(frames)
    decode_busy = float(sum(stats.decode_s))
    encode_busy = float(sum(stats.encode_s))
    write_busy = float(sum(stats.write_s))
    # Per-clip encoder time is the batch time shared over its clips; errored clips carry 0 and are left out.
    encode_per_clip = [float(s) for s in stats.encode_s if s > 0]
    decode_cpus = float(getattr(getattr(config, "decode_stage", None), "num_cpus", 1.0) or 1.0)
    decode_mean = float(np.mean(stats.decode_s)) if stats.decode_s else 0.0
    encode_mean = float(np.mean(encode_per_clip)) if encode_per_clip else 0.0
    tasks_per_encoder = decode_mean / encode_mean if encode_mean > 0 else 0.0
    vt_total = int(sum(vtok_per_clip))
    fs_total = int(sum(fs_per_clip))
    vt_mean = grid_tokens + summary.mean_residual_tokens_per_clip
    dataset_bytes = int(sum(s.get("bytes", 0) for s in manifest.get("shards", [])))
    return {
        "report_version": REPORT_VERSION,
        "generated_unix": time.time(),
        "output": mask_text(summary.output),
        "fingerprint": summary.fingerprint,
        "schema_version": manifest.get("schema_version"),
        "vtok_version": manifest.get("vtok_version"),
        "format": manifest.get("format"),
        "counts": {
            "videos_in": summary.videos_in,
            "clips_out": summary.clips_out,
            "quarantined": summary.quarantined,
            "clips_this_run": clips_this_run,
            "encoded_this_run": encoded,
            "quarantined_this_run": clips_this_run - encoded,
            "shards_planned": manifest.get("num_shards_planned", 0),
            # Committed before this run plus written by it (a shard whose inputs all failed has no file).
            "shards_committed": summary.shards_written + summary.shards_skipped,
            "shard_files": len(manifest.get("shards", [])),
            "shards_written": summary.shards_written,
            "shards_skipped": summary.shards_skipped,
            "complete": bool(manifest.get("complete", False)),
        },
        "tokens": {
            "key_tokens_per_clip": grid_tokens,
            "residual_stride": stride,
            "residual_grid": residual_grid,
            # Dataset-wide means (from every committed shard), then this run's exact distribution.
            "dataset_mean_vtok_per_clip": vt_mean,
            "dataset_mean_frame_sampling_per_clip": summary.mean_frame_tokens_per_clip,
            # None when no clip was tokenized: there is no ratio to state.
            "dataset_reduction": (summary.mean_frame_tokens_per_clip / vt_mean) if summary.clips_out else None,
            "vtok_per_clip": _dist([float(v) for v in vtok_per_clip]),
            "frame_sampling_per_clip": _dist([float(v) for v in fs_per_clip]),
            "frames_per_clip": _dist([float(v) for v in frames]),
            "vtok_total_this_run": vt_total,
            "frame_sampling_total_this_run": fs_total,
            "histogram": {"vtok": _histogram(vtok_per_clip), "frame_sampling": _histogram(fs_per_clip)},
        },
        "bytes": {
            "dataset_shard_bytes": dataset_bytes,
            "written_this_run": int(sum(stats.shard_bytes)),
            "per_clip": dataset_bytes / summary.clips_out if summary.clips_out else 0.0,
        },
        "time": {
            "started_unix": stats.started_unix,
            "wall_s": summary.wall_time_s,
            "listing_s": stats.listing_s,
            "setup_s": stats.setup_s,
            "pipeline_s": stats.pipeline_s,
        },
        "stages": {
            "decode": {
                "busy_s": decode_busy,
                "clips": clips_this_run,
                "clips_per_busy_s": _rate(clips_this_run, decode_busy),
                "per_clip_s": _dist([float(s) for s in stats.decode_s]),
            },
            "encode": {
                "busy_s": encode_busy,
                "clips": encoded,
                "clips_per_busy_s": _rate(encoded, encode_busy),
                "per_clip_s": _dist(encode_per_clip),
            },
            "write": {
                "busy_s": write_busy,
                "shards": len(stats.write_s),
                "clips": clips_this_run,
                "clips_per_busy_s": _rate(clips_this_run, write_busy),
                "bytes_per_busy_s": _rate(sum(stats.shard_bytes), write_busy),
            },
        },
        "throughput": {
            "clips_per_s_wall": _rate(clips_this_run, summary.wall_time_s),
            "clips_per_s_pipeline": _rate(clips_this_run, stats.pipeline_s),
            "timeline": [[float(t), int(n)] for t, n in stats.timeline],
        },
        "sizing": {
            "decode_s_per_clip": decode_mean,
            "encode_s_per_clip": encode_mean,
            "decode_tasks_per_encoder": tasks_per_encoder,
            "decode_cpus_per_encoder": tasks_per_encoder * decode_cpus,
            "encode_num_gpus": float(getattr(getattr(config, "encode", None), "num_gpus", 0.0) or 0.0),
        },
        "errors": {
            "by_reason": dict(sorted(summary.errors.items())),
            "samples": _error_samples(summary.output, manifest, storage_options),
        },
        "skipped": {"by_label": dict(sorted(summary.skipped.items())),
                    "examples": [mask_text(u) for u in summary.skipped_examples]},
        "config": redact(config),
        "command": reproduce_command(config),
        "encoder": _encoder_text(config, manifest.get("tokenizer", {})),
        "shard_files": [{k: f[k] for k in ("file", "rows", "bytes")} for f in manifest.get("shards", [])[:MAX_SHARD_ROWS]],
        "environment": environment(),
        "key_frames": [{"caption": mask_text(caption), "png": png_data_uri(frame)} for caption, frame in stats.key_frames],
        "runs": [{
            "started_unix": stats.started_unix,
            "wall_s": summary.wall_time_s,
            "clips": clips_this_run,
            "encoded": encoded,
            "quarantined": clips_this_run - encoded,
            "shards_written": summary.shards_written,
            "shards_skipped": summary.shards_skipped,
            "clips_per_s_wall": _rate(clips_this_run, summary.wall_time_s),
            "did_work": clips_this_run > 0,
            "config": redact(config),
        }],
        "shown_run": 0,
    }


def reproduce_command(config: Any, job: str = "tokenize") -> str:
    """The `vtok JOB key=value ...` that makes this config: every key that differs from its default.

    Credentials are left out (redacted); storage_options, a dict, is given as one JSON value.
    """
    import shlex

    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return ""
    current, default = _flatten(redact(config)), _flatten(redact(type(config)()))
    args = [f"{k}={_cli_value(v)}" for k, v in current.items() if default.get(k, object()) != v]
    return shlex.join(["vtok", job, *args])


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if isinstance(v, dict) and v and not k.endswith("storage_options"):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cli_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _encoder_text(config: Any, tokenizer: dict[str, Any]) -> str:
    encoder = getattr(getattr(config, "tokenizer", None), "encoder", None) or "the built-in tiny CLIP"
    detail = ", ".join(f"{k} {tokenizer[k]}" for k in ("model_type", "hidden_size", "patch_size", "image_size")
                       if k in tokenizer)
    return f"{mask_text(str(encoder))} ({detail})" if detail else mask_text(str(encoder))


def merge_previous(report: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """This run's report with every earlier run's record kept; a run that did nothing shows the last that did.

    `runs` lists every run oldest first; `shown_run` indexes the run whose timings the page charts.
    """
    if not previous:
        return report
    runs = previous.get("runs")
    if runs is None:  # a version-1 report: the one run it describes
        runs = [{"started_unix": previous["time"]["started_unix"], "wall_s": previous["time"]["wall_s"],
                 "clips": previous["counts"]["clips_this_run"], "did_work": previous["counts"]["clips_this_run"] > 0,
                 "config": previous.get("config")}]
    merged = dict(report)
    merged["runs"] = [*runs, *report["runs"]]
    if not report["runs"][0]["did_work"] and any(r.get("did_work") for r in runs):
        merged["shown_run"] = previous.get("shown_run", len(runs) - 1)
        for key in RUN_SECTIONS:
            merged[key] = previous[key]
        merged["tokens"] = {**report["tokens"], **{k: previous["tokens"][k] for k in RUN_TOKEN_FIELDS}}
        for key in ("clips_this_run", "encoded_this_run", "quarantined_this_run", "shards_written", "shards_skipped"):
            merged["counts"] = {**merged["counts"], key: previous["counts"][key]}
        for key in ("config", "command", "environment", "key_frames"):
            merged[key] = previous.get(key)
    else:
        merged["shown_run"] = len(merged["runs"]) - 1
    return merged


def write_report(
    summary: TokenizeSummary, config: Any, storage_options: dict[str, Any] | None = None
) -> ReportPaths:
    """Write report.json and report.html under the run's output (local or any fsspec URI)."""
    if storage_options is None:
        storage_options = getattr(config, "storage_options", None) or None
    paths = ReportPaths(json=join(summary.output, REPORT_FILE), html=join(summary.output, REPORT_HTML))
    report = merge_previous(build_report(summary, config, storage_options), read_json(paths.json, storage_options))
    write_json(paths.json, report, storage_options)
    write_bytes_atomic(paths.html, render_html(report).encode(), storage_options)
    return paths


def read_report(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json of a dataset folder, or the report file itself."""
    target = uri if uri.endswith(".json") else join(uri, REPORT_FILE)
    report = read_json(target, storage_options)
    if report is None:
        raise FileNotFoundError(f"{uri}: no {REPORT_FILE} (the dataset was made before reports, or never finished)")
    return report


# ---------------------------------------------------------------- text


def _tokens_text(t: dict[str, Any]) -> str:
    if t.get("dataset_reduction") is None:
        return "no clips were tokenized"
    return (f"VTok {vtok_formula(t.get('residual_grid', 1))} mean {t['dataset_mean_vtok_per_clip']:.1f}; "
            f"frame sampling T*S mean "
            f"{t['dataset_mean_frame_sampling_per_clip']:.1f}; {t['dataset_reduction']:.1f}x fewer")


def format_report(report: dict[str, Any]) -> list[str]:
    """A readable summary of report.json, for `vtok report`."""
    c, t, st, tm = report["counts"], report["tokens"], report["stages"], report["time"]
    errors = report["errors"]["by_reason"]
    vt, fs = t["vtok_per_clip"], t["frame_sampling_per_clip"]
    lines = [
        f"output             {report['output']}",
        f"fingerprint        {str(report['fingerprint'])[:16]}  (schema v{report['schema_version']}, "
        f"vtok {report['vtok_version']})",
        f"clips              {c['clips_out']} out of {c['videos_in']} inputs, {c['quarantined']} quarantined"
        f"; {c['clips_this_run']} processed in this run",
        f"shards             {c['shards_committed']} committed of {c['shards_planned']} planned "
        f"({c['shards_written']} written in this run, {c['shards_skipped']} already committed)"
        f"{'' if c['complete'] else '; INCOMPLETE'}",
        f"bytes              {fmt_bytes(report['bytes']['dataset_shard_bytes'])} of shards "
        f"({fmt_bytes(report['bytes']['per_clip'])} per clip)",
        f"tokens per clip    {_tokens_text(t)}",
    ]
    skipped = report.get("skipped", {}).get("by_label", {})
    if skipped:
        lines.append(f"skipped            {sum(skipped.values())} by the listing: "
                     + ", ".join(f"{k} {v}" for k, v in skipped.items()))
    runs = report.get("runs", [])
    if len(runs) > 1:
        worked = [r for r in runs if r.get("did_work")]
        lines.append(f"runs               {len(runs)} ({len(worked)} did work); timings below are of run "
                     f"{report.get('shown_run', len(runs) - 1) + 1}")
    if vt["count"]:
        lines.append(
            f"  this run         VTok p50 {vt['p50']:.0f} / p90 {vt['p90']:.0f} / max {vt['max']:.0f}; "
            f"T*S p50 {fs['p50']:.0f} / p90 {fs['p90']:.0f} / max {fs['max']:.0f}; total "
            f"{t['vtok_total_this_run']} vs {t['frame_sampling_total_this_run']}"
        )
    lines += [
        f"wall time          {fmt_s(tm['wall_s'])} (listing {fmt_s(tm['listing_s'])}, setup "
        f"{fmt_s(tm['setup_s'])}, pipeline {fmt_s(tm['pipeline_s'])})",
        f"throughput         {report['throughput']['clips_per_s_wall']:.2f} clips/s over the wall time",
        "stage busy time    "
        + ", ".join(
            f"{name} {fmt_s(st[name]['busy_s'])} ({st[name]['clips_per_busy_s']:.1f} clips/busy-s)"
            for name in ("decode", "encode", "write")
        ),
        f"sizing             {sizing_advice(report)}",
        "errors             " + (", ".join(f"{k} {v}" for k, v in errors.items()) if errors else "none"),
    ]
    for reason, samples in report["errors"].get("samples", {}).items():
        for sample in samples[:1]:
            lines.append(f"  {reason:<16} e.g. {sample['message'][:140]}")
    return lines
