"""Session-wide fixtures: one private model cache, one local Ray, one tiny shapes corpus."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray_nodes import free_port

# Before anything imports vtok or starts Ray: hermetic cache and quiet libraries for workers too.
os.environ.setdefault("VTOK_CACHE", tempfile.mkdtemp(prefix="vtok-test-cache-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# Decoder fault injection (vtok.isolated) for files named with these markers, in every Ray worker.
os.environ["VTOK_DECODE_FAULTS"] = "crash=__vtok_crash__,hang=__vtok_hang__"


def _port_outside_ephemeral_range() -> int:
    """A free port that no bind(0) can be handed later. The server listens only when the first test needs it,
    minutes after this pick; a port from the ephemeral range (free_port's) was then at times taken by one of
    Ray's processes (they bind port 0), and boto3 found nothing listening."""
    import random
    import socket

    low = 20000  # above Ray's worker ports (10002-19999)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            high = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        high = 32768
    rng = random.Random(os.getpid())
    for _ in range(100):
        port = rng.randrange(low, max(low + 1, high))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


# Every s3:// path in the tests goes to one moto server on loopback, found the standard AWS way
# (AWS_ENDPOINT_URL + credentials in the environment), so Ray workers started later see it too.
S3_PORT = _port_outside_ephemeral_range()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
os.environ.update(
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
)
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
    os.environ.pop(_var, None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup` by each module's xdist_group mark (tests/xdist_groups.py: xdist's own is a no-op on
    pytest 9)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.xdist_groups import ModuleGroupScheduling

    return ModuleGroupScheduling(config, log)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 protocol server (moto) on loopback for the whole session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield S3_ENDPOINT
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket; returns its name."""
    import boto3

    name = f"vtok-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the whole session (2 CPUs, like this machine)."""
    import ray

    from jobs.ray_setup import LOCAL_TRAIN_POLL_S, TRAIN_POLL_ENV

    os.environ.setdefault(TRAIN_POLL_ENV, LOCAL_TRAIN_POLL_S)  # as jobs/ray_setup's local Ray does
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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module of tiny-model tests (4x faster than two on a busy 2-core machine),
    the previous count restored after it. Use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_clip_dir() -> Path:
    from vtok.vision_models import ensure_tiny_clip

    return ensure_tiny_clip()


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtok.vision_models import save_tiny_vision_model

    return save_tiny_vision_model(tmp_path_factory.mktemp("siglip"), "siglip", seed=1)


@pytest.fixture(scope="session")
def shapes_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six tiny shapes-world videos (every third one static) and their manifest."""
    from vtok.shapes import ShapesConfig, write_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_corpus(str(out), 6, seed=7, cfg=ShapesConfig(width=64, height=64, num_frames=16, fps=8.0), static_every=3)
    return out


@pytest.fixture(scope="session")
def training_tokens(ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Token shards of 160 single-object shapes-world clips (8 frames each) from the real pipeline, made once."""
    from pipelines.tokenize.clips import SourceConfig
    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from pipelines.tokenize.targets import TargetsConfig
    from vtok.shapes import ShapesConfig, write_corpus
    from vtok.video import DecodeConfig

    root = tmp_path_factory.mktemp("training")
    cfg = ShapesConfig(width=64, height=64, num_frames=8, fps=8.0, min_objects=1, max_objects=1)
    manifest = write_corpus(str(root / "corpus"), 160, seed=21, cfg=cfg)
    out = root / "tokens"
    # frames_lowres for the decoder's tests (decoder_tokens): one tokenize pass serves both models.
    run_tokenize(TokenizeConfig(input=manifest, output=str(out), decode=DecodeConfig(fps=8.0, max_frames=8),
                                source=SourceConfig(), sink=SinkConfig(rows_per_shard=32),
                                targets=TargetsConfig(lowres_side=DECODER_SIDE)), progress=False)
    return out


DECODER_SIDE = 16
"""Side of training_tokens' frames_lowres: the decoder's frames in its tests."""


HELDOUT_CLIPS = 24
"""Clips of heldout_tokens, the evaluation's held-out shapes world."""


@pytest.fixture(scope="session")
def heldout_tokens(ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A held-out shapes world for the evaluation: HELDOUT_CLIPS single-object clips of another seed, tokenized
    exactly as training_tokens (same ShapesConfig, decode, frames_lowres side), so no sample key is shared."""
    from pipelines.tokenize.clips import SourceConfig
    from pipelines.tokenize.pipeline import TokenizeConfig, run_tokenize
    from pipelines.tokenize.sink import SinkConfig
    from pipelines.tokenize.targets import TargetsConfig
    from vtok.shapes import ShapesConfig, write_corpus
    from vtok.video import DecodeConfig

    root = tmp_path_factory.mktemp("heldout")
    cfg = ShapesConfig(width=64, height=64, num_frames=8, fps=8.0, min_objects=1, max_objects=1)
    manifest = write_corpus(str(root / "corpus"), HELDOUT_CLIPS, seed=1021, cfg=cfg)
    out = root / "tokens"
    run_tokenize(TokenizeConfig(input=manifest, output=str(out), decode=DecodeConfig(fps=8.0, max_frames=8),
                                source=SourceConfig(), sink=SinkConfig(rows_per_shard=32),
                                targets=TargetsConfig(lowres_side=DECODER_SIDE)), progress=False)
    return out


@pytest.fixture(scope="session")
def decoder_tokens(training_tokens: Path) -> Path:
    """Token shards with the decoder's pixel target: training_tokens' 160 single-object clips, 8 frames each,
    carry frames_lowres [8, 16, 16, 3] (targets.lowres_side=16), so the decoder's tests need no pass of their own."""
    return training_tokens


DECODER_STEPS = 300
"""Steps of the shared decoder run (pixel space, a small WanTransformer3DModel from scratch)."""
DECODER_ARGS = ["scaling.num_workers=1", "scaling.cpus_per_worker=1", "train.batch_size=16", "train.lr=5e-3",
                "train.grad_clip=0", "train.log_every_steps=25", "split.heldout_fraction=0.2", "model.dit.heads=4",
                "model.dit.head_dim=12", "model.dit.ffn_dim=128", "model.shift=3.0", "model.logit_mean=0.5",
                "samples.guidance=8.0", "samples.steps=10", "samples.clips=3", "samples.check_clips=32"]
"""The decoder tests' settings: flow matching weighted towards high noise (shift 3), where the conditioning
decides the sample, and guidance 8 when sampling make colour from the tokens learnable in a few hundred steps."""


@pytest.fixture(scope="session")
def decoder_run(ray_local, decoder_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One short `vtok train decoder` run on decoder_tokens (real Ray Train), shared by the decoder's tests:
    (run folder, what jobs.train.run_decoder returned)."""
    from jobs.train import load_train_decoder_config, run_decoder

    out = tmp_path_factory.mktemp("decoder") / "pixels"
    cfg = load_train_decoder_config([f"data={decoder_tokens}", f"output={out}", f"train.steps={DECODER_STEPS}",
                                     f"checkpoint.every_steps={DECODER_STEPS // 2}", *DECODER_ARGS])
    return out, run_decoder(cfg, progress=False)


MLLM_STEPS = 280
"""Steps of the session's two trained MLLM runs (vtok_run, baseline_run)."""
MLLM_BASE = ["scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "train.batch_size=8", "train.lr=2e-3",
             "train.log_every_steps=5", "split.heldout_fraction=0.2", "model.llm_mode=full"]
"""Two workers of half a CPU each: data-parallel on the 2-CPU test Ray, a CPU left for Ray Data's reads."""


def mllm_args(data: Path, out: Path | str, *extra: str) -> list[str]:
    """`vtok train mllm` arguments of the tests: MLLM_BASE on `data` into `out`, then `extra`."""
    return [f"data={data}", f"output={out}", *MLLM_BASE, *extra]


@pytest.fixture(scope="session")
def vtok_run(ray_local, training_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The session's trained VTok MLLM (real Ray Train, one worker): (run folder, what run_mllm returned)."""
    from jobs.train import load_train_mllm_config, run_mllm

    out = tmp_path_factory.mktemp("mllm") / "vtok"
    cfg = load_train_mllm_config(mllm_args(training_tokens, out, f"train.steps={MLLM_STEPS}",
                                           "checkpoint.every_steps=40", "scaling.num_workers=1",
                                           "scaling.cpus_per_worker=1", "train.batch_size=16",
                                           "train.warmup_steps=0", "train.grad_clip=0"))
    return out, run_mllm(cfg, progress=False)


@pytest.fixture(scope="session")
def baseline_run(ray_local, training_tokens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The session's trained frame-sampling baseline (2 frames, two workers): (run folder, run_mllm's result)."""
    from jobs.train import load_train_mllm_config, run_mllm

    out = tmp_path_factory.mktemp("mllm") / "frames"
    cfg = load_train_mllm_config(mllm_args(training_tokens, out, f"train.steps={MLLM_STEPS}",
                                           "checkpoint.every_steps=140", "model.tokens=frame_sampling",
                                           "model.frames=2"))
    return out, run_mllm(cfg, progress=False)
