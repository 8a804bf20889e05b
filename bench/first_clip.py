"""Time to the first committed clip of the demo's tokenize step, before and after, side by side.

    .venv/bin/python -m bench.first_clip [--quick] [--repeats N] [--baseline-rev REV] [--tree NAME=PATH ...]

The job is `make demo`'s tokenize step: the demo's corpus (64 shapes-world videos, seed 0, every 8th
static, as `vtok demo` writes it; cached) tokenized with the shipped config and `sink.mode=overwrite`,
as `vtok demo` runs it. Every run is a fresh `python` process running `jobs.cli.main(["tokenize", ...])`
(so every run pays for its imports, starts its own Ray and its own workers), with the clock started
just before the process is. Contenders:
  - after:  the working tree;
  - before: the code of git revision REV (default: BASELINE_REV, the commit this work started from),
            checked out into a git worktree under /tmp (removed at the end if this run made it);
  - NAME:   with --tree NAME=PATH, the code in folder PATH (e.g. a copy with one change left out).
Each run reports, in seconds from the process start:
  - ray ready:      ray.init returned;
  - first decoded:  the first decode task finished (Ray's timeline; its 8 clips leave it together);
  - encoder ready:  the encoder actor's constructor returned (Ray's timeline): model loaded;
  - first encoded:  the first clip out of the encoder reached the driver (the run report's first
                    throughput point: report.json under OUT);
  - first commit:   the first shard committed (the demo's 64 clips are one shard of 256 rows, so it
                    is also the last; ShardWriter.commit returned);
  - wall:           the process exited (run report and Ray shutdown included);
and the CPU seconds of the whole process tree. Runs are interleaved (before, after, ...; the order
rotates every round) after one untimed warm-up round (page cache, the worktree's bytecode); the
table gives medians and after/before ratios.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE_REV = "5f347ba"
"""HEAD when the first-clip work (issue 11, item 4) started: the 'before' of BENCHMARKS.md's First clip section."""

MEASURES = ("ray_ready_s", "first_decoded_s", "encoder_ready_s", "first_encoded_s", "first_commit_s", "wall_s", "cpu_s")
HEADERS = ("ray ready s", "first decoded s", "encoder ready s", "first encoded s", "first commit s", "wall s", "CPU s")
EXTRA = ("run_tokenize_start_s", "first_decode_start_s", "encoder_init_start_s")

# Runs inside the contender's tree (cwd and PYTHONPATH): only the standard library, Ray and the tree's own
# jobs.cli, so the same probe serves any revision. argv: [result JSON path, tokenize arguments...].
CHILD = r"""
import json, sys, time
marks = {}
out, argv = sys.argv[1], sys.argv[2:]
import ray
_init = ray.init
def init(*a, **k):
    r = _init(*a, **k)
    marks.setdefault("ray_ready", time.time())
    return r
ray.init = init
from pipelines.tokenize import sink
_commit = sink.ShardWriter.commit
def commit(self, *a, **k):
    r = _commit(self, *a, **k)
    marks.setdefault("first_commit", time.time())
    return r
sink.ShardWriter.commit = commit
from jobs.cli import main
rc = main(["tokenize", *argv])
marks["done"] = time.time()
decodes, inits = [], []
for e in ray.timeline() if ray.is_initialized() else []:
    if e.get("ph") != "X":
        continue
    if str(e.get("name", "")).endswith("map_operator._map_task"):
        decodes.append((e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6))
    if e.get("name") == "__init__" and "EncodeStage" in str(e.get("cat", "")):
        inits.append((e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6))
marks["first_decode_start"] = min(decodes)[0] if decodes else None
marks["first_decoded"] = min(end for _, end in decodes) if decodes else None
marks["encoder_init_start"], marks["encoder_ready"] = min(inits) if inits else (None, None)
json.dump({"rc": rc, "marks": marks}, open(out, "w"))
"""


def demo_corpus() -> str:
    """The corpus `vtok demo` writes (64 videos, seed 0, static_every=8, default ShapesConfig), cached."""
    from bench.common import cached_corpus
    from vtok.shapes import write_corpus

    return cached_corpus("demo_64v_seed0", lambda folder: write_corpus(str(folder), 64, seed=0, static_every=8))


def run_once(tree: Path, manifest: str, work: Path) -> dict[str, Any]:
    """One fresh tokenize process in `tree`'s code; its timings in seconds from the process start."""
    from bench.common import TreeCpu

    out = work / "tokens"
    ray_temp = Path(tempfile.mkdtemp(prefix="vtok-bench-ray-", dir="/tmp"))
    result = work / "result.json"
    args = [f"input={manifest}", f"output={out}", "sink.mode=overwrite", f"ray.temp_dir={ray_temp}"]
    env = os.environ | {"PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(result), *args], cwd=tree, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    cpu = TreeCpu(proc.pid)
    log_text, _ = proc.communicate()
    wall = time.time() - t0
    cpu_s = cpu.total()
    cpu.close()
    shutil.rmtree(ray_temp, ignore_errors=True)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"tokenize in {tree} failed ({proc.returncode}):\n{log_text.decode(errors='replace')[-3000:]}")
    child = json.loads(result.read_text())
    if child["rc"] != 0:
        raise RuntimeError(f"vtok tokenize in {tree} exited {child['rc']}:\n{log_text.decode(errors='replace')[-3000:]}")
    marks = child["marks"]
    report = json.loads((out / "report.json").read_text())
    if report["counts"]["clips_out"] != 64:
        raise RuntimeError(f"tokenize in {tree} wrote {report['counts']['clips_out']} clips, not the demo's 64")
    started = report["time"]["started_unix"]
    first_point = report["throughput"]["timeline"][0][0]

    def since(t: float | None) -> float | None:
        return None if t is None else t - t0

    return {
        "ray_ready_s": since(marks.get("ray_ready")),
        "first_decoded_s": since(marks.get("first_decoded")),
        "encoder_ready_s": since(marks.get("encoder_ready")),
        "first_encoded_s": since(started + first_point),
        "first_commit_s": since(marks.get("first_commit")),
        "wall_s": wall,
        "cpu_s": cpu_s,
        "run_tokenize_start_s": since(started),
        "first_decode_start_s": since(marks.get("first_decode_start")),
        "encoder_init_start_s": since(marks.get("encoder_init_start")),
        "clips": report["counts"]["clips_out"],
        "load_1m": load,
    }


def main() -> None:
    from bench.common import (
        git_worktree,
        interleaved,
        log,
        median,
        parser,
        remove_worktree,
        summary,
        table,
        write_results,
    )

    p = parser(__doc__.split("\n")[0])
    p.add_argument("--baseline-rev", default=BASELINE_REV, help=f"the 'before' revision (default {BASELINE_REV})")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                   help="another contender: the code in folder PATH, reported as NAME (repeatable)")
    p.add_argument("--no-before", action="store_true", help="leave out the 'before' contender")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)

    sha = subprocess.run(["git", "rev-parse", "--short", args.baseline_rev], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    trees: dict[str, Path] = {}
    made: Path | None = None
    if not args.no_before:
        before, fresh = git_worktree(args.baseline_rev)
        made = before if fresh else None
        trees[f"before ({sha})"] = before
    for item in args.tree:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_dir():
            p.error(f"--tree wants NAME=PATH of a folder, got {item!r}")
        trees[name] = Path(path).resolve()
    trees["after (working tree)"] = REPO

    manifest = demo_corpus()
    for f in Path(manifest).parent.rglob("*.mp4"):
        f.read_bytes()  # the page cache, for every contender alike
    work = Path(tempfile.mkdtemp(prefix="vtok-bench-first-clip-", dir="/tmp"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}

    def job(name: str) -> dict[str, Any]:
        r = run_once(trees[name], manifest, work)
        log(f"{name}: ray ready {r['ray_ready_s']:.1f}, first decoded {r['first_decoded_s']:.1f}, encoder init "
            f"{r['encoder_init_start_s']:.1f}-{r['encoder_ready_s']:.1f}, first encoded "
            f"{r['first_encoded_s']:.1f}, first commit {r['first_commit_s']:.1f}, wall {r['wall_s']:.1f} s, "
            f"{r['cpu_s']:.1f} CPU-s, load {r['load_1m']:.1f}")
        return r

    def keep(name: str, seconds: float, result: Any) -> None:
        runs[name].append(result)

    try:
        interleaved({name: (lambda n=name: job(n)) for name in trees}, repeats, warmup=not args.quick,
                    on_result=keep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made is not None:
            remove_worktree(made)

    def med(name: str, key: str) -> float:
        return median([r[key] for r in runs[name] if r[key] is not None])

    after = "after (working tree)"
    rows: list[list[Any]] = [[name, *(med(name, k) for k in MEASURES)] for name in trees]
    for name in trees:
        if name != after:
            rows.append([f"after / {name}", *(med(after, k) / med(name, k) for k in MEASURES)])
    print(table(["contender", *HEADERS], rows))
    loads = [r["load_1m"] for rs in runs.values() for r in rs]
    print(f"\n{repeats} interleaved rounds, medians; 1-minute load {min(loads):.1f}-{max(loads):.1f}")
    results = {name: {k: summary([r[k] for r in rs if r[k] is not None]) for k in (*MEASURES, *EXTRA)}
               for name, rs in runs.items()}
    path = write_results("first_clip", {
        "params": {"repeats": repeats, "quick": args.quick, "baseline_rev": args.baseline_rev, "baseline_sha": sha,
                   "trees": {name: str(tree) for name, tree in trees.items()}, "corpus": manifest},
        "results": results,
        "runs": runs,
    }, args.out)
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
