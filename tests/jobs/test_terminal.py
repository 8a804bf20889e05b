"""Ray's noise off the terminal: the core worker's constructor-argument error is dropped, nothing else is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

NOISE = ("[2026-12-01 09:32:55,172 E 2515 2515] core_worker.cc:2465: Actor with class name: "
         "'MapWorker(MapBatches(EncodeStage))' and ID: '83c8' has constructor arguments in the object store and "
         "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart "
         "will fail.")


def test_filtered_stderr_drops_only_the_known_noise() -> None:
    # Written to file descriptor 2 directly, as Ray's C++ core worker does.
    code = (
        "import os, sys\n"
        "from jobs.terminal import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'before\\n')\n"
        f"    os.write(2, {NOISE!r}.encode() + b'\\n')\n"
        "    os.write(2, b'\\rprogress 1/2')\n"
        "    print('a real error', file=sys.stderr)\n"
        "print('after', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=REPO)
    assert proc.returncode == 0
    assert proc.stderr == b"before\n\rprogress 1/2a real error\nafter\n"


def test_a_tokenize_run_shows_no_ray_info_lines(shapes_corpus: Path, tmp_path: Path) -> None:
    import tempfile

    ray_dir = tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp")  # Ray's socket paths must stay short
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "tokenize", f"input={shapes_corpus / 'manifest.jsonl'}",
         f"output={tmp_path / 'tokens'}", "decode.max_frames=4", f"ray.temp_dir={ray_dir}",
         "ray.num_cpus=2"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert any("starting a local Ray" in line for line in lines)
    assert any("tokenize  6/6 clips 100%" in line for line in lines)
    noisy = [line for line in lines if " -- " in line or "core_worker" in line]
    assert noisy == [], noisy
