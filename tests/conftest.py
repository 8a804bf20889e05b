"""Session-wide fixtures: one private model cache, one local Ray, one tiny shapes corpus."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports vtok or starts Ray: hermetic cache and quiet libraries for workers too.
os.environ.setdefault("VTOK_CACHE", tempfile.mkdtemp(prefix="vtok-test-cache-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the whole session (2 CPUs, like this machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="vtok-ray-", dir="/tmp"),
            log_to_driver=False,
        )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_clip_dir() -> Path:
    from vtok.tokenizer import ensure_tiny_clip

    return ensure_tiny_clip()


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtok.tokenizer import save_tiny_vision_model

    return save_tiny_vision_model(tmp_path_factory.mktemp("siglip"), "siglip", seed=1)


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny shapes-world videos (every third one static) and their manifest."""
    from vtok.shapes import ShapesConfig, write_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_corpus(str(out), 6, seed=7, cfg=ShapesConfig(width=64, height=64, num_frames=16, fps=8.0), static_every=3)
    return out
