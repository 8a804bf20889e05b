from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from vtok.isolated import IsolatedDecoder
from vtok.media import write_mp4
from vtok.video import DecodeConfig, DecodeError, decode_clip

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
