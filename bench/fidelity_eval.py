"""The fidelity study's pure parts and its in-process scoring (bench/fidelity.py runs the study).

Pure helpers (tested in tests/bench/test_fidelity.py): the equal-budget rule `budget_frames` (vtok.eval.probe's,
shared with the probe), the pooled and per-seed summary of TV-Align hits `summarize`, and the two Markdown
tables. `evaluate` scores one trained (MLLM, decoder) pair on held-out rows with vtok.eval.tv_align's own functions, in this process (no Ray).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from bench.common import table
from vtok.eval.probe import budget_frames  # noqa: F401 - the rule lives with the probe; bench.fidelity imports it here

TASKS: tuple[str, ...] = ("understanding", "generation", "reconstruction")
"""TV-Align's three measurements, in the order the table lists them."""
CHECKS: tuple[str, ...] = ("generation colour check", "reconstruction colour check")
"""The decoder report's weaker test (vtok.eval.foreground) on the same frames: is the mean colour of what stands
out from the background the object's colour? One item per clip (chance 1/6); it needs no segmentation."""

Summary = dict[str, dict[str, Any]]
"""category -> {"acc", "n", "lo", "hi" (pooled over seeds, 95% Wilson), "seeds" (each seed's accuracy),
"seed_min", "seed_max", "seed_sd" (sample SD across seeds; None for one seed)}."""


def summarize(per_seed: Sequence[Mapping[str, Sequence[bool]]]) -> Summary:
    """Hits of several seeds (one `category -> [hit?]` mapping each) -> Summary per category and "overall".

    The interval pools every seed's items (more items, a tighter interval for the mode's accuracy); the
    per-seed accuracies show how much a retrained model moves, which the pooled interval does not cover.
    """
    from vtok.eval.tv_align import category_accuracy

    if not per_seed:
        raise ValueError("summarize needs the hits of at least one seed")
    pooled = category_accuracy({c: [b for hits in per_seed for b in hits.get(c, [])]
                                for c in dict.fromkeys(c for hits in per_seed for c in hits)})
    each = [category_accuracy(hits) for hits in per_seed]
    out: Summary = {}
    for category, (acc, n, lo, hi) in pooled.items():
        seeds = [e[category][0] for e in each if category in e]
        out[category] = {"acc": acc, "n": n, "lo": lo, "hi": hi, "seeds": seeds,
                         "seed_min": min(seeds), "seed_max": max(seeds),
                         "seed_sd": statistics.stdev(seeds) if len(seeds) > 1 else None}
    return out


def cell(entry: Mapping[str, Any]) -> str:
    """A table cell, in %: "pooled [lo, hi]", then the seeds' range "(min-max)" when there are several."""
    text = f"{100 * entry['acc']:.1f} [{100 * entry['lo']:.1f}, {100 * entry['hi']:.1f}]"
    if len(entry["seeds"]) > 1:
        text += f" ({100 * entry['seed_min']:.0f}-{100 * entry['seed_max']:.0f})"
    return text


def accuracy_table(labels: Sequence[str], summaries: Mapping[str, Mapping[str, Summary]],
                   tasks: Sequence[str] = (*TASKS, *CHECKS)) -> str:
    """Accuracy per task and category, one column per mode (`labels`, the keys of `summaries`), side by side.

    summaries: mode -> task -> Summary; tasks that some mode lacks are left out, and so is the "overall" row
    of a task with one category. n is the items per mode (the same clips and questions for every mode; a mode
    whose n differs is refused, since its column would not compare with the others).
    """
    if not labels:
        raise ValueError("accuracy_table needs at least one mode")
    missing = [m for m in labels if m not in summaries]
    if missing:
        raise ValueError(f"accuracy_table: no results for mode(s) {missing}")
    rows: list[list[Any]] = []
    for task in tasks:
        if not all(task in summaries[m] for m in labels):
            continue
        categories = list(summaries[labels[0]][task])
        for category in categories if len(categories) > 2 else categories[:1]:
            ns = {summaries[m][task][category]["n"] for m in labels if category in summaries[m][task]}
            if len(ns) != 1 or not all(category in summaries[m][task] for m in labels):
                raise ValueError(f"{task}/{category}: the modes scored different items (n = {sorted(ns)})")
            rows.append([task, category, ns.pop(), *(cell(summaries[m][task][category]) for m in labels)])
    return table(["task", "category", "n", *labels], rows)


def cost_table(labels: Sequence[str], costs: Mapping[str, Mapping[str, Any]]) -> str:
    """Tokens per video and training step times per mode, each step time also as a ratio to the first mode.

    costs: mode -> {"tokens": tokens per video, "mllm_step_s" / "decoder_step_s": [one median per seed],
    "mllm_wall_s" / "decoder_wall_s": [training wall seconds per seed], "generate_s": [the MLLM's seconds to
    generate one caption's visual tokens, per seed]}; the table gives medians over seeds.
    """
    if not labels:
        raise ValueError("cost_table needs at least one mode")
    ref = costs[labels[0]]

    def med(values: Sequence[float]) -> float:
        return statistics.median(values) if values else math.nan

    rows = []
    for m in labels:
        c = costs[m]
        mllm, dec = med(c["mllm_step_s"]), med(c["decoder_step_s"])
        rows.append([m, c["tokens"], f"{c['tokens'] / ref['tokens']:.2f}x",
                     f"{mllm:.3f}", f"{mllm / med(ref['mllm_step_s']):.2f}x",
                     f"{dec:.3f}", f"{dec / med(ref['decoder_step_s']):.2f}x",
                     f"{med(c['generate_s']):.3f}", f"{med(c['generate_s']) / med(ref['generate_s']):.2f}x",
                     f"{med(c['mllm_wall_s']):.0f} + {med(c['decoder_wall_s']):.0f}"])
    return table(["mode", "tokens/video", "vs first", "MLLM step s", "vs first", "decoder step s", "vs first",
                  "generate tokens s/clip", "vs first", "train wall s (MLLM + decoder)"], rows)


def evaluate(mllm_checkpoint: str, decoder_checkpoint: str, rows: Sequence[Mapping[str, Any]], steps: int,
             guidance: float, seed: int = 0,
             threads: int = 1) -> tuple[dict[str, dict[str, list[bool]]], dict[str, float]]:
    """(task -> hits, seconds) of one (MLLM, decoder) checkpoint pair on held-out token rows, in this process.

    Tasks: TASKS (vtok.eval.tv_align) and CHECKS (vtok.eval.foreground on the same frames). The decoder
    samples `steps` Euler steps at classifier-free guidance `guidance`; each clip's noise is fixed by `seed`
    and its sample key (pipelines.decode.reconstruct.clip_seed), so every mode's decoder starts a clip from
    the same noise. One torch thread by default: on a shared, oversubscribed machine two threads made one
    caption's token generation 1-25x slower than one thread, at random. Seconds: {"understanding", "generation", "reconstruction", "tokens_per_clip" (the MLLM's
    visual-token generation alone, per caption), "decode_per_clip" (one decoder sampling)}.
    """
    import time

    import numpy as np
    import torch

    from pipelines.decode.reconstruct import Reconstructor
    from vtok.eval.foreground import background_of, foreground_colour, true_colour
    from vtok.eval.tv_align import generation_hits, reconstruction_hits, understanding_hits
    from vtok.models.mllm import VTokLM

    recon = Reconstructor(decoder_checkpoint, steps=steps, guidance=guidance, seed=seed, device="cpu",
                          num_threads=threads)
    mllm = VTokLM.from_pretrained(mllm_checkpoint).eval()
    sampling = [0.0, 0]

    def sample_frames(tokens: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        t0 = time.perf_counter()
        frames = recon.frames_of({"sample_key": [key], **{c: np.asarray(v)[None] for c, v in tokens.items()}})[0]
        sampling[0] += time.perf_counter() - t0
        sampling[1] += 1
        return frames

    def colour_hits(readings: list[dict[str, Any]]) -> dict[str, list[bool]]:
        truth = {str(r["sample_key"]): r.get("attributes") for r in rows}
        return {"color": [foreground_colour(x["frames"], background_of(truth[x["sample_key"]]))
                          == true_colour(truth[x["sample_key"]]) for x in readings]}

    seconds: dict[str, float] = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        understanding = understanding_hits(mllm, rows)
        seconds["understanding"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        generation, generated = generation_hits(mllm, sample_frames, rows, keep_frames=len(rows))
        seconds["generation"] = time.perf_counter() - t0
        seconds["tokens_per_clip"] = (seconds["generation"] - sampling[0]) / max(1, len(rows))
        t0 = time.perf_counter()
        reconstruction, reconstructed = reconstruction_hits(sample_frames, rows, keep_frames=len(rows))
        seconds["reconstruction"] = time.perf_counter() - t0
    seconds["decode_per_clip"] = sampling[0] / max(1, sampling[1])
    hits = {"understanding": understanding, "generation": generation, "reconstruction": reconstruction,
            CHECKS[0]: colour_hits(generated), CHECKS[1]: colour_hits(reconstructed)}
    return hits, seconds
