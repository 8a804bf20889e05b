"""The official VBench side: configuration errors, the results JSON, the subprocess run, the scores.

The subprocess tests run a stand-in `python` (a script) in place of an environment with VBench: it takes
the argv vtok builds, records what it was given, and writes a results JSON in VBench's layout, so the
command, environment, discovery, parsing and row building are vtok's real code.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vtok.errors import InputError
from vtok.eval.vbench import VBenchConfig, vbench_metrics
from vtok.eval.vbench_official import (
    DIMENSIONS,
    NORMALIZE_BOUNDS,
    VBenchRunError,
    check_config,
    parse_eval_results,
    proxy_quality_score,
    quality_score,
    run_official,
    semantic_score,
    total_score,
)
from vtok.shapes import ShapesConfig, generate

FAKE_VBENCH = """
import json, os, pathlib, sys, time
args = sys.argv[1:]
assert args[0] == "-c" and "from vbench.cli.vbench import main" in args[1] and args[2] == "evaluate", args
opts = dict(zip(args[3::2], args[4::2]))
mode = os.environ.get("FAKE_VBENCH", "ok")
out = pathlib.Path(opts["--output_path"])
videos = sorted(pathlib.Path(opts["--videos_path"]).glob("*.mp4"))
seen = {"opts": opts, "cwd": os.getcwd(), "cache": os.environ.get("VBENCH_CACHE_DIR"),
        "path0": os.environ["PATH"].split(os.pathsep)[0], "videos": [v.name for v in videos],
        "sizes": [v.stat().st_size for v in videos]}
(out / "seen.json").write_text(json.dumps(seen))
if mode == "fail":
    print("boom: no GPU", file=sys.stderr)
    sys.exit(3)
if mode == "hang":
    import subprocess
    worker = subprocess.Popen(["sleep", "60"])  # as VBench's torch.distributed workers: a grandchild
    (out / "worker.pid").write_text(str(worker.pid))
    time.sleep(30)
if mode == "silent":
    print("Traceback (most recent call last):\\nRuntimeError: CUDA error", file=sys.stderr)
    sys.exit(0)  # VBench's evaluate ignores its launcher's exit status
dim = opts["--dimension"]
per = []
for v in videos:
    i = int(v.stem.split("_")[1])
    value = i % 2 == 0 if dim == "dynamic_degree" else 0.9 + 0.01 * i
    per.append({"video_path": str(v), "video_results": value})
agg = sum(float(p["video_results"]) for p in per) / len(per)
(out / "results_2025-01-01-00:00:00_eval_results.json").write_text(json.dumps({dim: [agg, per]}))
"""


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "vbench-env" / "bin" / "python"
    path.parent.mkdir(parents=True)
    path.write_text(f"#!{sys.executable}\n{FAKE_VBENCH}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    (tmp_path / "vbench-cache").mkdir()
    return tmp_path / "vbench-cache"


def _videos(n: int = 3) -> list[np.ndarray]:
    cfg = ShapesConfig(width=64, height=64, num_frames=8, speed=4.0)
    return [generate(2, i, cfg).frames for i in range(n)]


# the results JSON


def test_parse_eval_results_official_layout(tmp_path: Path) -> None:
    path = tmp_path / "results_2025-01-01-00:00:00_eval_results.json"
    path.write_text(json.dumps({
        "subject_consistency": [0.9525, [{"video_path": "/v/a-0.mp4", "video_results": 0.96},
                                         {"video_path": "/v/b-0.mp4", "video_results": 0.945}]],
        "dynamic_degree": [0.5, [{"video_path": "/v/a-0.mp4", "video_results": True},
                                 {"video_path": "/v/b-0.mp4", "video_results": False}]],
    }, indent=4))
    rows = parse_eval_results(path)
    assert rows == [
        {"metric": "subject_consistency", "value": 0.9525, "n": 2,
         "per_video": [{"video_path": "/v/a-0.mp4", "value": 0.96},
                       {"video_path": "/v/b-0.mp4", "value": 0.945}]},
        {"metric": "dynamic_degree", "value": 0.5, "n": 2,
         "per_video": [{"video_path": "/v/a-0.mp4", "value": 1.0},
                       {"video_path": "/v/b-0.mp4", "value": 0.0}]},
    ]


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not a VBench results JSON"),
    ('{"color": 0.5}', r"'color' is not \[aggregate, per-video list\]"),
    ('{"color": [0.5, [{"video_path": "x"}]]}', "'color' video 0 has no 'video_results'"),
    ('{"color": [0.5, [{"video_results": "high"}]]}', "'color' video 0 is 'high', not a finite number"),
    ('{"color": [NaN, []]}', "'color' aggregate is nan, not a finite number"),
])
def test_parse_eval_results_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "r_eval_results.json"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        parse_eval_results(path)
    with pytest.raises(InputError, match="no such file"):
        parse_eval_results(tmp_path / "missing.json")


# configuration


def test_check_config_errors_name_the_key(tmp_path: Path, fake_python: Path, cache_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VBENCH_CACHE_DIR", raising=False)
    ok = {"dimensions": ("motion_smoothness",), "python": str(fake_python), "cache_dir": str(cache_dir)}
    resolved = check_config(VBenchConfig(**ok))
    assert resolved == {"official": ["motion_smoothness"], "python": fake_python, "cache_dir": str(cache_dir)}
    # temporal_flickering needs nothing from outside.
    assert check_config(VBenchConfig(dimensions=("temporal_flickering",)))["official"] == []
    plain = tmp_path / "not-executable"
    plain.write_text("")
    cases = [
        ({"dimensions": ("motion_smooth",)}, "vbench.dimensions: unknown dimension 'motion_smooth'; known: "
                                             + ", ".join(DIMENSIONS)),
        ({"dimensions": ("color",)}, "vbench.dimensions: 'color' needs VBench's own prompt suite"),
        ({"dimensions": ("scene", "scene")}, "vbench.dimensions: 'scene' is listed twice"),
        ({"python": None}, "vbench.python: not set; dimensions motion_smoothness need an interpreter"),
        ({"python": str(tmp_path / "nope" / "python")},
         f"vbench.python: {tmp_path}/nope/python does not exist"),
        ({"python": str(plain)}, f"vbench.python: {plain} is not an executable file"),
        ({"cache_dir": None}, "VBENCH_CACHE_DIR: not set"),
        ({"cache_dir": str(tmp_path / "no-cache")}, f"VBENCH_CACHE_DIR: {tmp_path}/no-cache is not a folder"),
        ({"timeout_s": 0}, "vbench.timeout_s must be > 0, got 0"),
        ({"ngpus": 0}, "vbench.ngpus must be an int >= 1, got 0"),
    ]
    for change, message in cases:
        with pytest.raises(InputError) as e:
            check_config(VBenchConfig(**(ok | change)))
        assert str(e.value).startswith(message), (change, str(e.value))
        assert "\n" not in str(e.value)
    # The environment's VBENCH_CACHE_DIR serves when the config leaves it out.
    monkeypatch.setenv("VBENCH_CACHE_DIR", str(cache_dir))
    assert check_config(VBenchConfig(**(ok | {"cache_dir": None})))["cache_dir"] == str(cache_dir)


# the subprocess run


def test_vbench_metrics_runs_the_official_package(tmp_path: Path, fake_python: Path, cache_dir: Path) -> None:
    cfg = VBenchConfig(dimensions=("temporal_flickering", "motion_smoothness", "dynamic_degree"),
                       proxies=False, python=str(fake_python), cache_dir=str(cache_dir),
                       output_dir=str(tmp_path / "out"))
    rows = {r["metric"]: r for r in vbench_metrics(_videos(3), cfg)}
    assert list(rows) == ["temporal_flickering", "motion_smoothness", "dynamic_degree"]
    ms = rows["motion_smoothness"]
    half = 1.96 * float(np.std([0.90, 0.91, 0.92], ddof=1)) / math.sqrt(3)
    assert ms == {"metric": "motion_smoothness", "category": "all", "value": pytest.approx(0.91), "n": 3,
                  "lo": pytest.approx(0.91 - half), "hi": pytest.approx(0.91 + half)}
    assert rows["dynamic_degree"]["value"] == pytest.approx(2 / 3)  # videos 0 and 2 move, as the JSON says
    seen = json.loads((tmp_path / "out" / "motion_smoothness" / "seen.json").read_text())
    assert seen["opts"]["--dimension"] == "motion_smoothness"
    assert seen["opts"]["--mode"] == "custom_input"
    assert seen["opts"]["--output_path"] == str(tmp_path / "out" / "motion_smoothness") == seen["cwd"]
    assert seen["opts"]["--load_ckpt_from_local"] == "True" and seen["opts"]["--ngpus"] == "1"
    assert seen["cache"] == str(cache_dir)
    assert seen["path0"] == str(fake_python.parent)  # VBench's shell finds this env's python first
    assert seen["videos"] == ["video_00000.mp4", "video_00001.mp4", "video_00002.mp4"]
    assert min(seen["sizes"]) > 0


@pytest.mark.parametrize(("mode", "message"), [
    ("fail", r"vbench evaluate --dimension imaging_quality: exit 3: boom: no GPU"),
    ("silent", r"vbench evaluate --dimension imaging_quality: no \*_eval_results.json in .*; "
               r"last output: RuntimeError: CUDA error"),
    ("hang", r"vbench evaluate --dimension imaging_quality: timed out after 1 s"),
])
def test_run_official_failures_are_one_line(tmp_path: Path, fake_python: Path, cache_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch, mode: str, message: str) -> None:
    monkeypatch.setenv("FAKE_VBENCH", mode)
    videos = tmp_path / "videos"
    videos.mkdir()
    cfg = VBenchConfig(dimensions=("imaging_quality",), python=str(fake_python), cache_dir=str(cache_dir),
                       output_dir=str(tmp_path / "out"), timeout_s=1)
    started = time.monotonic()
    with pytest.raises(VBenchRunError, match=message) as e:
        run_official(videos, cfg)
    assert "\n" not in str(e.value)
    assert time.monotonic() - started < 8  # not held until the stand-in's worker ends
    if mode == "hang":  # the whole process group went, the worker the stand-in started included
        pid = int((tmp_path / "out" / "imaging_quality" / "worker.pid").read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_run_official_refuses_paths_vbench_shell_would_split(tmp_path: Path, fake_python: Path,
                                                             cache_dir: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    cfg = VBenchConfig(dimensions=("imaging_quality",), python=str(fake_python), cache_dir=str(cache_dir),
                       output_dir=str(tmp_path / "my results"))
    with pytest.raises(InputError, match=r"vbench.output_dir: '.*my results.*' has a character VBench"):
        run_official(videos, cfg)
    assert not os.path.exists(tmp_path / "my results")  # refused before anything was made or run


# VBench's normalization and weights


def test_quality_score_hand_computed_and_proxies_left_out() -> None:
    values = {"temporal_flickering": 0.99, "motion_smoothness": 0.98, "dynamic_degree": 0.5}
    expected = ((0.99 - 0.6293) / (1.0 - 0.6293) + (0.98 - 0.706) / (0.9975 - 0.706) + 0.5 * 0.5) / 2.5
    score, used = quality_score(values)
    assert score == pytest.approx(expected, rel=1e-12)
    assert used == ["temporal_flickering", "motion_smoothness", "dynamic_degree"]
    with_proxy = quality_score(values | {"proxy_subject_consistency": 0.2, "object_class": 0.1})
    assert with_proxy == (score, used)
    with pytest.raises(InputError, match="values: unknown dimension 'flicker'"):
        quality_score({"flicker": 0.9})
    with pytest.raises(InputError, match="no VBench quality dimension in values"):
        quality_score({"proxy_motion_smoothness": 0.9})
    with pytest.raises(InputError, match=r"values\['motion_smoothness'\] is nan"):
        quality_score({"motion_smoothness": float("nan")})


def test_total_semantic_and_proxy_scores() -> None:
    top = {name: hi for name, (lo, hi) in NORMALIZE_BOUNDS.items()}
    bottom = {name: lo for name, (lo, hi) in NORMALIZE_BOUNDS.items()}
    assert total_score(top)[0] == pytest.approx(1.0) and total_score(bottom)[0] == pytest.approx(0.0)
    assert len(total_score(top)[1]) == 16
    semantic, used = semantic_score({"scene": 0.4111, "temporal_flickering": 0.9})
    assert (semantic, used) == (pytest.approx(0.5), ["scene"])
    # (4 * quality + 1 * semantic) / 5 with quality 1 and semantic 0.5
    assert total_score({"temporal_flickering": 1.0, "scene": 0.4111})[0] == pytest.approx(0.9)
    proxy, used = proxy_quality_score({"temporal_flickering": 1.0, "proxy_dynamic_degree": 1.0,
                                       "motion_smoothness": 0.1})
    assert used == ["temporal_flickering", "proxy_dynamic_degree"]  # official motion_smoothness: no proxy
    assert proxy == pytest.approx((1.0 + 0.5) / 1.5)
