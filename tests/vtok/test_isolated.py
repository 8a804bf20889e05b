from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vtok import isolated
from vtok.isolated import IsolatedDecoder, child_command
from vtok.media import write_mp4
from vtok.video import DecodeConfig, DecodeError, VideoInfo, decode_clip

CFG = DecodeConfig(num_frames=4, size=32)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 48, 3), dtype=np.uint8)
    folder = tmp_path_factory.mktemp("iso")
    path = write_mp4(folder / "good.mp4", frames, 8.0)
    for marker in ("__vtok_crash__", "__vtok_hang__"):
        (folder / f"{marker}.mp4").write_bytes(path.read_bytes())
    return path


def test_isolated_decode_equals_in_process(clip: Path) -> None:
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        a = decoder.decode(str(clip), CFG)
        b = decode_clip(str(clip), CFG)
        assert a.frames.tobytes() == b.frames.tobytes()
        assert a.frame_indices.tolist() == b.frame_indices.tolist() == [0, 4, 7, 11]
        assert a.info == b.info
        with pytest.raises(DecodeError) as err:
            decoder.decode(str(clip.parent / "missing.mp4"), CFG)
        assert err.value.reason == "missing" and "missing.mp4" in str(err.value)
    finally:
        decoder.close()


def test_a_crashing_decoder_costs_one_clip(clip: Path) -> None:
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        with pytest.raises(DecodeError) as err:
            decoder.decode(str(clip.parent / "__vtok_crash__.mp4"), CFG)
        assert err.value.reason == "decoder_crash" and "exit code -11" in err.value.message
        # A fresh child serves the next clip.
        assert decoder.decode(str(clip), CFG).frames.shape == (4, 32, 32, 3)
    finally:
        decoder.close()


def test_a_hanging_decoder_is_killed_at_the_time_limit(clip: Path) -> None:
    decoder = IsolatedDecoder(timeout_s=2)
    try:
        started = time.monotonic()
        with pytest.raises(DecodeError) as err:
            decoder.decode(str(clip.parent / "__vtok_hang__.mp4"), CFG)
        assert err.value.reason == "timeout" and "2 s" in err.value.message
        assert time.monotonic() - started < 10
        assert decoder.decode(str(clip), CFG).frame_indices.tolist() == [0, 4, 7, 11]
    finally:
        decoder.close()


# ---------------------------------------------------------------------------------------------------
# The child: a lean `python` running vtok.isolated, framed JSON + .npy over its stdin/stdout.


def _frame(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


def _read_frame(stream: Any) -> bytes:
    (length,) = struct.unpack("<Q", stream.read(8))
    data = stream.read(length)
    assert len(data) == length
    return data


def _request(uri: str, cfg: DecodeConfig = CFG) -> bytes:
    return json.dumps({"uri": uri, "cfg": dataclasses.asdict(cfg), "clip_start_s": None, "clip_end_s": None,
                       "storage_options": None, "byte_range": None}).encode()


def test_the_child_protocol_is_json_and_npy_frames_that_round_trip_exactly(clip: Path) -> None:
    child = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdin is not None and child.stdout is not None
        expected = decode_clip(str(clip), CFG)
        for _ in range(2):  # one long-lived child serves clip after clip
            child.stdin.write(_frame(_request(str(clip))))
            child.stdin.flush()
            header = json.loads(_read_frame(child.stdout))
            assert header["blobs"] == 2 and VideoInfo(**header["info"]) == expected.info
            blobs = [_read_frame(child.stdout) for _ in range(header["blobs"])]
            for blob, array in zip(blobs, (expected.frames, expected.frame_indices)):
                assert blob.startswith(b"\x93NUMPY")  # .npy, never a pickle
                got = np.load(io.BytesIO(blob), allow_pickle=False)
                assert got.dtype == array.dtype and got.shape == array.shape and got.tobytes() == array.tobytes()
        child.stdin.write(_frame(_request(str(clip.parent / "missing.mp4"))))
        child.stdin.flush()
        assert json.loads(_read_frame(child.stdout))["error"][1] == "missing"
        child.stdin.close()  # end-of-file: the child exits, having written nothing more
        assert child.wait(timeout=10) == 0
        assert child.stdout.read() == b""
    finally:
        child.kill()
        child.wait()


def test_a_child_that_dies_mid_message_costs_one_clip(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VTOK_DECODE_FAULTS", "truncate=__vtok_truncate__")
    (clip.parent / "__vtok_truncate__.mp4").write_bytes(clip.read_bytes())
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        with pytest.raises(DecodeError) as err:
            decoder.decode(str(clip.parent / "__vtok_truncate__.mp4"), CFG)
        assert err.value.reason == "decoder_crash" and "exit code 3" in err.value.message
        assert decoder.decode(str(clip), CFG).frame_indices.tolist() == [0, 4, 7, 11]
    finally:
        decoder.close()


def test_a_malformed_reply_is_a_decoder_crash(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    garbage = "import os, sys; sys.stdin.buffer.read(8); os.write(1, b'\\xff' * 64); sys.stdin.buffer.read()"
    monkeypatch.setattr(isolated, "child_command", lambda: [sys.executable, "-c", garbage])
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        with pytest.raises(DecodeError) as err:
            decoder.decode(str(clip), CFG)
        assert err.value.reason == "decoder_crash" and "malformed" in err.value.message
        assert decoder.pid is None  # killed: it is not trusted with another clip
    finally:
        decoder.close()


def test_what_the_child_prints_does_not_corrupt_replies(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A decoder library that writes to stdout, from Python and from C (descriptor 1).
    noisy = ("import os, sys; sys.path.insert(0, sys.argv[1]); import vtok.isolated as m; real = m.decode_clip; "
             "m.decode_clip = lambda *a, **k: (print('noise'), os.write(1, b'raw noise\\n'), real(*a, **k))[2]; "
             "m._child_main()")
    monkeypatch.setattr(isolated, "child_command", lambda: [sys.executable, "-c", noisy, isolated._CODE_ROOT])
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        assert decoder.decode(str(clip), CFG).frames.tobytes() == decode_clip(str(clip), CFG).frames.tobytes()
    finally:
        decoder.close()


def test_a_child_killed_between_clips_is_replaced_without_losing_a_clip(clip: Path) -> None:
    decoder = IsolatedDecoder(timeout_s=30)
    try:
        decoder.decode(str(clip), CFG)
        first = decoder.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        assert decoder.decode(str(clip), CFG).frame_indices.tolist() == [0, 4, 7, 11]
        assert decoder.pid not in (None, first)
    finally:
        decoder.close()


def test_close_ends_the_child(clip: Path) -> None:
    decoder = IsolatedDecoder(timeout_s=30)
    decoder.decode(str(clip), CFG)
    pid = decoder.pid
    assert pid is not None
    decoder.close()
    assert decoder.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone and reaped, not a zombie


def test_the_child_is_lean() -> None:
    # What the child imports: not Ray (a multiprocessing spawn child in a Ray worker re-imports Ray's worker).
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import vtok.isolated; "
             "print(sorted(m for m in ('ray', 'torch', 'transformers', 'multiprocessing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, isolated._CODE_ROOT], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
