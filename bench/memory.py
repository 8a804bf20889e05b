"""Peak memory: the pipeline on 100 vs 1,000 videos, and one 10-minute 1080p video decoded.

    .venv/bin/python -m bench.memory [--quick]

Every measured run is a child process (`python -m bench.memory --child ...`); this process samples the
child's whole process tree with psutil every 0.2 s: the child itself (the driver) and every descendant
(Ray's GCS, raylet and workers, the isolated decoder children). Reported per run: the peak of the summed
RSS of the tree, the peak RSS of the driver alone, and the peak summed PSS (proportional set size:
shared pages such as the libraries every Ray worker maps are split between the processes that share
them, so PSS adds up to real memory while summed RSS over-counts them).

  - pipeline: run_tokenize (jobs/configs/tokenize.yaml's shipped defaults) on 100 and on 1,000 default
    shapes-world videos (128x128, 32 frames), alternating, each in a fresh Ray, then one run on 3,000
    (does the peak level off?). Target: the 1,000-video peak within 10% of the 100-video peak. The
    JSON also keeps each process's own peak summed by kind (driver, decode workers, encoder actor, ...).
  - long video: one 10-minute 1080p H.264 video (30 fps, keyframe every 2 s; made once and cached):
    decode_clip with fps sampling spread over the whole video (decode.fps=0.1, max_frames=60) with
    PyAV and with decord, vs the naive way, every frame decoded into a list of RGB arrays, stopped once
    its tree passes --naive-limit-gib (reported as ">").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import interleaved, log, parser, summary, table, write_results

SAMPLE_S = 0.2


# ---------------------------------------------------------------------------------------------------------
# The sampler (parent side).


def _tree(proc: Any) -> list[Any]:
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _mem(proc: Any, pss: bool) -> tuple[int, int]:
    """(rss, pss) of one process; 0 for a process that ended meanwhile."""
    import psutil

    try:
        if pss:
            info = proc.memory_full_info()
            return info.rss, info.pss
        return proc.memory_info().rss, 0
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return 0, 0


class TreeSampler:
    """Samples a process tree's memory every SAMPLE_S seconds in a background thread."""

    def __init__(
        self, pid: int, pss: bool = True, stop_above_bytes: int | None = None, interval_s: float = SAMPLE_S
    ) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval_s
        self.pss = pss
        self.stop_above = stop_above_bytes
        self.peak_tree_rss = 0
        self.peak_tree_pss = 0
        self.peak_driver_rss = 0
        self.peak_processes = 0
        self.samples = 0
        self.stopped_early = False
        self.peak_by_pid: dict[int, tuple[str, int]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            procs = _tree(self.proc)
            if not procs:
                break
            mems = [_mem(p, self.pss) for p in procs]
            for p, (rss, _) in zip(procs, mems):
                name, peak = self.peak_by_pid.get(p.pid) or ("other ray", 0)
                # A Ray worker's title changes (a fresh worker, then IDLE, then its task): keep the most
                # telling kind seen.
                new = _label(p)
                if _KIND_RANK.get(new, 99) < _KIND_RANK.get(name, 99):
                    name = new
                self.peak_by_pid[p.pid] = (name, max(peak, rss))
            rss = sum(m[0] for m in mems)
            self.peak_tree_rss = max(self.peak_tree_rss, rss)
            self.peak_tree_pss = max(self.peak_tree_pss, sum(m[1] for m in mems))
            self.peak_driver_rss = max(self.peak_driver_rss, mems[0][0])
            self.peak_processes = max(self.peak_processes, len(procs))
            self.samples += 1
            if self.stop_above is not None and rss > self.stop_above:
                self.stopped_early = True
                for p in reversed(procs):
                    try:
                        p.kill()
                    except Exception:  # noqa: BLE001 - it may have ended already
                        pass
                break
            self._done.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join()
        return {
            "peak_tree_rss": self.peak_tree_rss,
            "peak_tree_pss": self.peak_tree_pss if self.pss else None,
            "peak_driver_rss": self.peak_driver_rss,
            "peak_processes": self.peak_processes,
            "samples": self.samples,
            "stopped_early": self.stopped_early,
            "peak_rss_by_kind": _by_kind(self.peak_by_pid),
        }


# Process kinds in a local Ray run, by a marker in the process title / command line, in order of rank.
_KINDS = (
    ("bench.memory", "driver"),
    ("EncodeStage", "encoder actor"),
    ("decode_batch", "decode worker"),
    ("vtok.isolated import _child_main", "isolated decoder"),
    ("ray::IDLE", "idle worker"),
)
_KIND_RANK = {kind: rank for rank, (_, kind) in enumerate(_KINDS)} | {"raylet": 10, "gcs": 11}


def _label(proc: Any) -> str:
    try:
        # Ray's own daemons by executable name: a worker's command line also mentions "--raylet-name".
        name = proc.name()
        if name in ("raylet", "gcs_server"):
            return "raylet" if name == "raylet" else "gcs"
        cmd = " ".join(proc.cmdline())
    except Exception:  # noqa: BLE001 - gone or not readable
        return "other ray"
    return next((kind for marker, kind in _KINDS if marker in cmd), "other ray")


def _by_kind(peaks: dict[int, tuple[str, int]]) -> dict[str, dict[str, int]]:
    """Sum of each process's own peak RSS, and the process count, by kind (peaks need not coincide)."""
    out: dict[str, dict[str, int]] = {}
    for name, peak in peaks.values():
        entry = out.setdefault(name, {"processes": 0, "sum_of_peak_rss": 0})
        entry["processes"] += 1
        entry["sum_of_peak_rss"] += peak
    return out


def run_child(
    args: list[str], stop_above_bytes: int | None = None, pss: bool = True, interval_s: float = SAMPLE_S
) -> dict[str, Any]:
    """Run `python -m bench.memory --child ...`, sampling its tree; merge its JSON report (last stdout line)."""
    cmd = [sys.executable, "-m", "bench.memory", "--child", *args]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sampler = TreeSampler(child.pid, pss=pss, stop_above_bytes=stop_above_bytes, interval_s=interval_s)
    out, _ = child.communicate()
    result = sampler.stop() | {"wall_s": time.perf_counter() - started, "returncode": child.returncode}
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if lines:
        result |= json.loads(lines[-1])
    elif not result["stopped_early"]:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {child.returncode}")
    return result


# ---------------------------------------------------------------------------------------------------------
# The children.


def child_pipeline(manifest: str) -> dict[str, Any]:
    """run_tokenize with the shipped defaults (jobs/configs/tokenize.yaml) on a fresh local Ray."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from jobs.tokenize import load_tokenize_config
    from pipelines.tokenize.pipeline import run_tokenize

    temp = tempfile.mkdtemp(prefix="vtok-bench-ray-", dir="/tmp")
    out = tempfile.mkdtemp(prefix="vtok-bench-memory-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    cfg = load_tokenize_config([f"input={manifest}", f"output={out}"])
    summary_ = run_tokenize(cfg, progress=False)
    ray.shutdown()
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(temp, ignore_errors=True)
    return {"clips_out": summary_.clips_out, "videos_per_s": summary_.videos_per_s}


def child_decode(path: str, backend: str) -> dict[str, Any]:
    import av  # noqa: F401 - loaded before the baseline, as decode_clip loads it
    import psutil

    from vtok.video import DecodeConfig, decode_clip

    baseline = psutil.Process().memory_info().rss
    cfg = DecodeConfig(backend=backend, fps=0.1, max_frames=60)
    started = time.perf_counter()
    clip = decode_clip(path, cfg)
    return {
        "frames": int(len(clip.frame_indices)),
        "last_index": int(clip.frame_indices[-1]),
        "decode_s": time.perf_counter() - started,
        "rss_after_imports": baseline,
        "output_bytes": int(clip.frames.nbytes),
    }


def child_naive(path: str, progress_file: str) -> dict[str, Any]:
    """Every frame decoded into a list of RGB arrays; progress goes to a file in case we are killed."""
    import av

    frames: list[np.ndarray] = []
    started = time.perf_counter()
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) % 25 == 0:
                Path(progress_file).write_text(f"{len(frames)} {time.perf_counter() - started:.2f}")
    return {"frames": len(frames), "decode_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------------------


def _gib(b: float) -> float:
    return b / 2**30


def _mib(b: float) -> float:
    return b / 2**20


def bench_pipeline(sizes: list[int], repeats: int) -> dict[str, Any]:
    from bench.pipeline import make_corpus

    manifests = {n: make_corpus(n, 128, 128, 32, 8.0) for n in sizes}
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}

    def measure(n: int) -> dict[str, Any]:
        result = run_child(["pipeline", manifests[n]])
        runs[n].append(result)
        log(f"pipeline on {n} videos: tree RSS {_mib(result['peak_tree_rss']):.0f} MiB, PSS "
            f"{_mib(result['peak_tree_pss']):.0f} MiB, driver {_mib(result['peak_driver_rss']):.0f} MiB, "
            f"{result['wall_s']:.1f} s")
        return result

    interleaved({str(n): (lambda n=n: measure(n)) for n in sizes}, repeats, warmup=False)
    out: dict[str, Any] = {}
    for n in sizes:
        out[str(n)] = {
            key: summary([float(r[key]) for r in runs[n]])
            for key in ("peak_tree_rss", "peak_tree_pss", "peak_driver_rss", "peak_processes", "wall_s")
        } | {"peak_rss_by_kind_runs": [r["peak_rss_by_kind"] for r in runs[n]]}
    return out


def bench_long_video(minutes: float, width: int, height: int, repeats: int, limit_gib: float) -> dict[str, Any]:
    from bench.media import long_video

    path = long_video(minutes, width, height)
    size = path.stat().st_size
    results: dict[str, list[dict[str, Any]]] = {"pyav": [], "decord": [], "naive": []}

    def sampled(backend: str) -> None:
        # One process, no tree: sample it 20 times a second so a short decode's peak is not missed.
        r = run_child(["decode", str(path), backend], interval_s=0.05)
        results[backend].append(r)
        log(f"decode_clip {backend}: tree RSS {_mib(r['peak_tree_rss']):.0f} MiB in {r['wall_s']:.1f} s")

    def naive() -> None:
        with tempfile.NamedTemporaryFile("r", suffix=".progress") as progress:
            r = run_child(["naive", str(path), progress.name], stop_above_bytes=int(limit_gib * 2**30), pss=False,
                          interval_s=0.05)
            text = Path(progress.name).read_text().split()
        if text:
            r["frames_at_stop"], r["seconds_at_stop"] = int(text[0]), float(text[1])
        results["naive"].append(r)
        log(f"naive decode-all: tree RSS {_gib(r['peak_tree_rss']):.2f} GiB, stopped early: {r['stopped_early']}")

    interleaved({"pyav": lambda: sampled("pyav"), "decord": lambda: sampled("decord"), "naive": naive},
                repeats, warmup=False)
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        num_frames, fps = stream.frames, float(stream.average_rate)
    return {
        "video": {"path": path.name, "file_bytes": size, "frames": num_frames, "fps": fps, "width": width,
                  "height": height, "decoded_rgb_bytes": num_frames * width * height * 3},
        "runs": {
            name: {
                "peak_tree_rss": summary([float(r["peak_tree_rss"]) for r in rs]),
                "peak_tree_pss": summary([float(r["peak_tree_pss"] or 0) for r in rs]) if name != "naive" else None,
                "wall_s": summary([float(r["wall_s"]) for r in rs]),
                "rss_after_imports": summary([float(r["rss_after_imports"]) for r in rs if "rss_after_imports" in r]),
                "stopped_early": any(r["stopped_early"] for r in rs),
                "detail": rs,
            }
            for name, rs in results.items()
        },
        "naive_limit_gib": limit_gib,
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        report = {"pipeline": lambda: child_pipeline(rest[0]),
                  "decode": lambda: child_decode(rest[0], rest[1]),
                  "naive": lambda: child_naive(rest[0], rest[1])}[kind]()
        print(json.dumps(report), flush=True)
        return
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--naive-limit-gib", type=float, default=4.0, help="stop the naive decode above this")
    p.add_argument("--no-plateau", action="store_true", help="skip the single 3,000-video run")
    args = p.parse_args()
    if args.quick:
        sizes, plateau, repeats, minutes, limit = [20, 100], None, args.repeats or 1, 1.0, 1.0
    else:
        sizes, plateau, repeats, minutes, limit = [100, 1000], 3000, args.repeats or 3, 10.0, 4.0
    width, height = 1920, 1080
    limit = args.naive_limit_gib if args.naive_limit_gib != 4.0 else limit

    pipeline = bench_pipeline(sizes, repeats)
    if plateau is not None and not args.no_plateau:
        # One longer run: does the peak keep rising past 1,000 videos, or has it levelled off?
        pipeline |= bench_pipeline([plateau], 1)
    long = bench_long_video(minutes, width, height, repeats, limit)

    small, large = (pipeline[str(n)] for n in sizes)
    growth = {k: large[k]["median"] / small[k]["median"] - 1 for k in ("peak_tree_rss", "peak_tree_pss",
                                                                       "peak_driver_rss")}
    rows = [[f"pipeline, {n} videos", _mib(pipeline[str(n)]["peak_tree_rss"]["median"]),
             _mib(pipeline[str(n)]["peak_tree_pss"]["median"]), _mib(pipeline[str(n)]["peak_driver_rss"]["median"]),
             pipeline[str(n)]["peak_processes"]["median"], pipeline[str(n)]["wall_s"]["median"]] for n in sizes]
    rows.append([f"growth {sizes[0]} -> {sizes[1]} videos", f"{growth['peak_tree_rss']:+.1%}",
                 f"{growth['peak_tree_pss']:+.1%}", f"{growth['peak_driver_rss']:+.1%}", "", ""])
    if plateau is not None and str(plateau) in pipeline:
        big = pipeline[str(plateau)]
        rows.append([f"pipeline, {plateau} videos (1 run)", _mib(big["peak_tree_rss"]["median"]),
                     _mib(big["peak_tree_pss"]["median"]), _mib(big["peak_driver_rss"]["median"]),
                     big["peak_processes"]["median"], big["wall_s"]["median"]])
        for key in ("peak_tree_rss", "peak_tree_pss", "peak_driver_rss"):
            growth[f"{key}_{sizes[1]}_to_{plateau}"] = big[key]["median"] / large[key]["median"] - 1
        rows.append([f"growth {sizes[1]} -> {plateau} videos", f"{growth[f'peak_tree_rss_{sizes[1]}_to_{plateau}']:+.1%}",
                     f"{growth[f'peak_tree_pss_{sizes[1]}_to_{plateau}']:+.1%}",
                     f"{growth[f'peak_driver_rss_{sizes[1]}_to_{plateau}']:+.1%}", "", ""])
    print(table(["run", "peak tree RSS MiB", "peak tree PSS MiB", "peak driver RSS MiB", "processes", "wall s"],
                rows))
    video = long["video"]
    print(f"\n{minutes:g}-minute {width}x{height} video: {_mib(video['file_bytes']):.0f} MiB file, "
          f"{video['frames']} frames, {_gib(video['decoded_rgb_bytes']):.0f} GiB as decoded RGB")
    vrows = []
    for name, label in (("pyav", "decode_clip pyav (fps 0.1, 60 frames)"),
                        ("decord", "decode_clip decord (fps 0.1, 60 frames)"),
                        ("naive", "naive: every frame into a list")):
        r = long["runs"][name]
        peak = _mib(r["peak_tree_rss"]["median"])
        cell = f">{peak:.0f} (stopped)" if r["stopped_early"] else peak
        base = r["rss_after_imports"]["median"]
        vrows.append([label, cell, "" if base != base else _mib(base), r["peak_tree_rss"]["median"] / video["file_bytes"],
                      r["wall_s"]["median"]])
    print(table(["decode", "peak RSS MiB", "RSS after imports MiB", "peak RSS / file size", "wall s"], vrows))
    out = write_results("memory", {
        "params": {"sizes": sizes, "repeats": repeats, "minutes": minutes, "width": width, "height": height,
                   "quick": args.quick, "sample_s": SAMPLE_S},
        "pipeline": pipeline, "pipeline_growth": growth, "long_video": long,
    }, args.out)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
