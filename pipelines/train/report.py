"""The training report: RUN/report.json (a summary of metrics.jsonl) and RUN/report.html (loss curves,
throughput, the config), in the style of the tokenize report; `compare` runs plot on the same axes."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from pipelines.report_html import card, environment, esc, fmt_s, line_chart_svg, page, table
from pipelines.train.metrics import read_metrics
from pipelines.train.retention import retention_summary
from schemas.layout import REPORT_FILE, REPORT_HTML
from vtok.secrets import mask_text, redact
from vtok.storage import join, read_json, write_bytes_atomic, write_json

TRAIN_REPORT_KIND = "train"
KEPT_SECTIONS = ("heldout", "samples")
"""report.json entries a rewrite without `extra` carries over."""


def _mean(records: list[dict[str, Any]], key: str, tail: int = 0) -> float:
    values = [float(r[key]) for r in records[-tail:] if key in r] if tail else [float(r[key]) for r in records if key in r]
    return float(np.mean(values)) if values else 0.0


def summarize(run_uri: str, config: Any, storage_options: dict[str, Any] | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json of a training run: what it trained, how far, how fast, and its last losses."""
    records = read_metrics(run_uri, storage_options)
    losses = sorted({k for r in records for k in r if k.startswith("loss")})
    last = records[-1] if records else {}
    return {
        "kind": TRAIN_REPORT_KIND,
        "generated_unix": time.time(),
        "run": mask_text(run_uri),
        "steps_done": int(last.get("step", 0)),
        "losses": {k: {"first": records[0].get(k), "last": last.get(k), "last_10_mean": _mean(records, k, 10)}
                   for k in losses},
        "step_time_s": _mean(records, "step_time_s", 50),
        "tokens_per_s": _mean(records, "tokens_per_s", 50),
        "samples_per_s": _mean(records, "samples_per_s", 50),
        "retention": retention_summary(records),
        "config": redact(config),
        "environment": environment(),
        **(extra or {}),
    }


def write_train_report(run_uri: str, config: Any, storage_options: dict[str, Any] | None = None,
                       extra: dict[str, Any] | None = None, compare: list[str] | None = None) -> str:
    """Write RUN/report.json and RUN/report.html; returns the page's URI.

    A report rewritten without `extra` (to add a comparison, say) keeps the held-out figures and sample frames it had."""
    if extra is None:
        previous = read_json(join(run_uri, REPORT_FILE), storage_options) or {}
        extra = {k: previous[k] for k in KEPT_SECTIONS if previous.get(k)} or None
    report = summarize(run_uri, config, storage_options, extra)
    write_json(join(run_uri, REPORT_FILE), report, storage_options)
    runs = {run_uri: read_metrics(run_uri, storage_options)}
    for other in compare or []:
        runs[other] = read_metrics(other, storage_options)
    html = render_train_html(report, runs)
    write_bytes_atomic(join(run_uri, REPORT_HTML), html.encode(), storage_options)
    return join(run_uri, REPORT_HTML)


def render_train_html(report: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> str:
    """The page: a loss chart per loss (every run on the same axes), throughput, the config."""
    names = {uri: mask_text(uri.rstrip("/").rsplit("/", 1)[-1]) for uri in runs}
    loss_keys = sorted({k for records in runs.values() for r in records for k in r if k.startswith("loss")})
    sections = []
    for key in loss_keys:
        series = [(names[u], [r["step"] for r in rs if key in r], [float(r[key]) for r in rs if key in r])
                  for u, rs in runs.items()]
        sections.append(f"<section><h2>{esc(key)}</h2>{line_chart_svg(series, key, 'step', key)}</section>")
    if report.get("samples"):
        sections.append(samples_section(report["samples"]))
    series = [(names[u], [r["step"] for r in rs], [float(r.get("tokens_per_s", 0.0)) for r in rs])
              for u, rs in runs.items()]
    sections.append(f"<section><h2>Throughput</h2>{line_chart_svg(series, 'tokens per second', 'step', 'tokens/s')}"
                    f"</section>")
    retention = report.get("retention") or {}
    if retention.get("note"):
        sections.append(f"<section><h2>Checkpoints</h2><p>After step {retention['step']}: "
                        f"{esc(retention['note'])}.</p></section>")
    rows = [[k, f"{v['first']:.4f}" if v["first"] is not None else "", f"{v['last']:.4f}" if v["last"] is not None
             else "", f"{v['last_10_mean']:.4f}"] for k, v in report["losses"].items()]
    sections.append(f"<section><h2>Losses</h2>{table(['loss', 'first', 'last', 'mean of last 10'], rows)}</section>")
    env = report.get("environment", {})
    sections.append("<section><h2>The run</h2>" + table(["", ""], [
        ["libraries", ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())],
        ["machine", ", ".join(f"{k} {v}" for k, v in env.get("machine", {}).items())],
    ]) + "</section>")
    config = json.dumps(report["config"], indent=2, sort_keys=True, default=str)
    sections.append(f"<section><details><summary><b>Config</b> (credentials redacted)</summary><pre>{esc(config)}"
                    f"</pre></details></section>")
    cards = [
        card("steps", f"{report['steps_done']:,}", "done"),
        card("step time", fmt_s(report["step_time_s"]), "mean of the last 50"),
        card("throughput", f"{report['tokens_per_s']:,.0f}", "tokens/s"),
        card("samples/s", f"{report['samples_per_s']:.1f}", "all workers"),
    ]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(report["generated_unix"]))
    return page("vtok training report", f"{report['run']} · {generated}", cards, sections)


def samples_section(samples: list[dict[str, Any]]) -> str:
    """Held-out clips, each as two rows of frames: the ground truth, then what the model made of its tokens.

    `samples`: [{"sample_key", "caption", "truth": [PNG data URIs], "reconstruction": [PNG data URIs],
    "note": "..."}]; small frames are drawn enlarged with crisp pixels."""

    def row(uris: list[str], label: str) -> str:
        images = "".join(f'<img src="{uri}" width="64" height="64" style="image-rendering:pixelated" alt="{label}">'
                         for uri in uris)
        return f'<div class="strip">{images}<span>{label}</span></div>'

    clips = []
    for clip in samples:
        note = f" · {esc(clip['note'])}" if clip.get("note") else ""
        caption = esc(mask_text(clip.get("caption") or ""))[:100]
        clips.append(f'<figure style="width:auto"><figcaption><code>{esc(clip["sample_key"][:16])}</code> {caption}'
                     f"{note}</figcaption>{row(clip['truth'], 'ground truth')}"
                     f"{row(clip['reconstruction'], 'reconstruction')}</figure>")
    return ("<section><h2>Held-out clips</h2><p>Ground truth frames beside the reconstruction sampled from the "
            f"clip's tokens.</p>{''.join(clips)}</section>")


def format_train_report(report: dict[str, Any]) -> list[str]:
    """`vtok report RUN` for a training run."""
    lines = [
        f"run                {report['run']}",
        f"steps              {report['steps_done']}",
        f"step time          {fmt_s(report['step_time_s'])} ({report['samples_per_s']:.1f} samples/s, "
        f"{report['tokens_per_s']:,.0f} tokens/s)",
    ]
    for key, v in report["losses"].items():
        if v["first"] is not None and v["last"] is not None:
            lines.append(f"{key:<18} {v['first']:.4f} -> {v['last']:.4f} (last 10: {v['last_10_mean']:.4f})")
    for key, value in (report.get("heldout") or {}).items():
        lines.append(f"held-out {key:<9} {value:.3f}")
    retention = report.get("retention") or {}
    if retention.get("note"):
        lines.append(f"checkpoints        {retention['note']}")
    return lines


def read_any_report(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """report.json of a run or dataset folder (or the file itself), None when there is none."""
    target = uri if uri.endswith(".json") else join(uri, REPORT_FILE)
    return read_json(target, storage_options)
