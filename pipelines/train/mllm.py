"""`vtok train mllm`: the VTok MLLM (or its frame-sampling baseline) on token shards, with Ray Train.

The driver checks the data and the model before anything starts (naming the key or URI that is wrong),
prepares what every worker shares (the text tokenizer, the feature statistics, the base LM) in the run
directory once, binds the run to its settings, then hands the shared loop (pipelines.train.loop) an
`MLLMTask`.

    RUN/run.json                what the run is made of (a resume must match it)
    RUN/text_tokenizer/         trained from the corpus's captions and questions when none is given
    RUN/base_llm/               the built-in tiny Qwen2 when model.llm is not set
    RUN/feature_stats.safetensors
    RUN/checkpoints/step_*/     trainable weights, g_phi, optimizer, state, config, tokenizer (complete marker last)
    RUN/metrics.jsonl, RUN/report.json, RUN/report.html
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.train.config import CheckpointSettings, ScalingSettings, TrackingSettings, TrainSettings
from pipelines.train.loop import LoopSpec
from pipelines.train.metrics import check_mlflow
from pipelines.train.run import bind_training_run, fit, flat_config
from schemas.checkpoint import CONFIG, DATA, FEATURE_STATS, G_PHI, LLM_DIR, TEXT_TOKENIZER_DIR, TRAINABLE
from schemas.token_shard import SCHEMA_VERSION
from vtok.errors import InputError
from vtok.models.mllm_config import MLLMConfig
from vtok.secrets import redact
from vtok.storage import join, localize_dir

logger = logging.getLogger(__name__)


@dataclass
class SplitSettings:
    """Which clips are held out of training."""

    heldout_fraction: float = 0.1
    """Fraction of sample keys held out (by a hash of the key, so the split never changes)."""
    salt: str = "vtok-heldout-v1"
    """Salt of that hash: another salt, another split."""
    heldout_data: str | None = None
    """A separate held-out token dataset; then every clip of `data` trains."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"split.heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


@dataclass
class TrainMLLMConfig:
    """The MLLM training job, minus where Ray runs (jobs/ adds that)."""

    data: str = "???"
    """Token dataset (a `vtok tokenize` output), local or s3://."""
    output: str = "???"
    """The run directory: checkpoints, metrics, report; rerunning the same command resumes it."""
    model: MLLMConfig = field(default_factory=MLLMConfig)
    """The MLLM (model.llm, model.tokens, model.frames, ...)."""
    text_tokenizer: str | None = None
    """HF tokenizer directory; None trains a word-level one from the corpus into RUN/text_tokenizer."""
    split: SplitSettings = field(default_factory=SplitSettings)
    """Held-out clips."""
    train: TrainSettings = field(default_factory=TrainSettings)
    """Steps, batch size, learning rate, seed."""
    scaling: ScalingSettings = field(default_factory=ScalingSettings)
    """Ray Train workers."""
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    """Checkpoint interval and retention."""
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    """MLflow."""
    stats_clips: int = 2048
    """Clips the feature statistics are computed from (the first of the training split)."""
    materialize_bytes: int = 1 << 30
    """A dataset whose shards total at most this many bytes is read once and kept in Ray's object store for
    every epoch; a larger one streams from storage each epoch."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """fsspec options for s3:// data and runs."""


@dataclass
class MLLMTask:
    """The MLLM as the shared loop sees it (built on each worker from files in the run directory)."""

    model: MLLMConfig
    llm_uri: str
    tokenizer_uri: str
    prepared_uri: str
    seed: int
    data_record: dict[str, Any]
    config_record: dict[str, Any]
    storage_options: dict[str, Any] | None = None
    _collator: Any = None

    def build(self, device: Any) -> Any:
        from vtok.models.feature_stats import FeatureStats
        from vtok.models.mllm import VTokLM
        from vtok.models.text import load_text_tokenizer
        from vtok.training.mllm_batch import MLLMCollator

        # Local paths as they are; an s3:// run's files are downloaded once per node into the cache.
        tokenizer = load_text_tokenizer(localize_dir(self.tokenizer_uri, self.storage_options))
        stats = FeatureStats.load(localize_dir(self.prepared_uri, self.storage_options) / FEATURE_STATS)
        llm_dir = localize_dir(self.llm_uri, self.storage_options)
        model = VTokLM(self.model, tokenizer, stats, llm_dir).to(device)
        self._collator = MLLMCollator(tokenizer, self.model, stats, seed=self.seed)
        self._device = device
        return model

    def collate(self, batch: dict[str, Any], epoch: int) -> Any:
        return self._collator(batch, step=epoch)

    def loss(self, model: Any, inputs: Any) -> dict[str, Any]:
        out = model(inputs.to(self._device))
        tokens = int(inputs.attention_mask.sum())
        return {"loss": out["loss"], "loss_understanding": out["loss_understanding"],
                "loss_generation": out["loss_generation"], "tokens": tokens}

    def checkpoint_payload(self, model: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
        """What VTokLM.save_pretrained writes, so VTokLM.from_pretrained(checkpoint folder) loads it in one call."""
        folder = Path(tempfile.mkdtemp(prefix="vtok-ckpt-"))
        model.save_pretrained(folder)
        config = json.loads((folder / CONFIG).read_text())
        files = {name: folder / name for name in (TRAINABLE, G_PHI, FEATURE_STATS)}
        dirs = {TEXT_TOKENIZER_DIR: folder / TEXT_TOKENIZER_DIR}
        if (folder / LLM_DIR).is_dir():
            dirs[LLM_DIR] = folder / LLM_DIR
        return {}, {CONFIG: {**config, "job": self.config_record}, DATA: self.data_record}, dirs, files

    def restore(self, model: Any, loaded: Any) -> None:
        full = self.model.llm_mode == "full"
        model.load_trainable_state_dict(loaded.tensors[TRAINABLE], skip_llm=full)
        if full:  # a fully trained LM is saved as an HF directory, not in trainable.safetensors
            model.load_llm_weights(loaded.dirs[LLM_DIR])


def check_data(cfg: TrainMLLMConfig) -> dict[str, Any]:
    """The dataset's manifest, after every check a user can fail before training starts."""
    from vtok.dataset import read_manifest

    opts = cfg.storage_options or None
    try:
        manifest = read_manifest(cfg.data, opts)
    except FileNotFoundError as err:
        raise InputError(f"data={cfg.data}: not a token dataset ({err})") from None
    if not manifest.get("shards"):
        raise InputError(f"data={cfg.data}: the dataset has no committed shards; tokenize into it first")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"data={cfg.data}: schema version {manifest.get('schema_version')!r}, this vtok reads "
                         f"{SCHEMA_VERSION!r}")
    if cfg.model.tokens == "frame_sampling" and not manifest.get("tokenizer", {}).get("frame_tokens"):
        raise InputError(f"data={cfg.data}: model.tokens=frame_sampling needs frame_tokens in the shards; "
                         f"tokenize with tokenizer.frame_tokens=true")
    frames = [int(t) for t in manifest.get("frame_counts", {})]
    if cfg.model.tokens == "frame_sampling" and cfg.model.frames and frames and cfg.model.frames > min(frames):
        raise InputError(f"model.frames={cfg.model.frames} exceeds the shortest clip's T={min(frames)} in {cfg.data}")
    return manifest


def check_llm(path: str) -> None:
    """Refuse an LM directory that is not a causal LM, naming it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise InputError(f"model.llm={path}: not a Hugging Face model directory ({str(err).splitlines()[0]})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise InputError(f"model.llm={path}: a {config.model_type!r} model is not a causal LM "
                         f"(AutoModelForCausalLM cannot load it)")


def _split_rows(cfg: TrainMLLMConfig) -> tuple[Any, Any]:
    """(train, held-out) Ray Datasets of the columns the model reads."""
    import ray.data

    import vtok
    from vtok.training.split import is_heldout

    # The driver's own reads (the feature statistics over the first rows) see the same rows every run; the
    # training ingest sets its order in fit(), as Ray Train does not take it from this context.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    columns = ["sample_key", "caption", "attributes", "key_tokens"]
    columns.append("residual_features" if cfg.model.tokens == "vtok" else "frame_tokens")
    opts = cfg.storage_options or None
    ds = vtok.read_tokens(cfg.data, opts)
    present = set(ds.schema().names)
    ds = ds.select_columns([c for c in columns if c in present])
    if cfg.split.heldout_data:
        return ds, vtok.read_tokens(cfg.split.heldout_data, opts).select_columns([c for c in columns if c in present])
    fraction, salt = cfg.split.heldout_fraction, cfg.split.salt

    def keep(batch: Any, heldout: bool) -> Any:
        import pyarrow as pa

        mask = [is_heldout(str(k), fraction, salt) == heldout for k in batch.column("sample_key").to_pylist()]
        return batch.filter(pa.array(mask, pa.bool_()))

    train = ds.map_batches(keep, fn_kwargs={"heldout": False}, batch_format="pyarrow")
    held = ds.map_batches(keep, fn_kwargs={"heldout": True}, batch_format="pyarrow")
    return train, held


PREPARED_DIR = "prepared"
"""RUN/prepared/: what every worker of the run shares, made once by the driver (reused on resume)."""


def prepare(cfg: TrainMLLMConfig, train_ds: Any) -> tuple[str, str, str]:
    """(tokenizer dir, base LM dir, prepared dir) URIs: RUN/prepared/ holds the text tokenizer (unless one is
    given), the tiny base LM (unless model.llm is given) and the feature statistics, written once."""
    from vtok.eval.questions import template_texts
    from vtok.models.feature_stats import FeatureStats
    from vtok.models.text import load_text_tokenizer, train_word_tokenizer
    from vtok.models.tiny_llm import save_tiny_llm
    from vtok.storage import get_fs
    from vtok.training.batching import collate_tokens

    opts = cfg.storage_options or None
    prepared = join(cfg.output, PREPARED_DIR)
    tokenizer_uri = cfg.text_tokenizer or join(prepared, TEXT_TOKENIZER_DIR)
    llm_uri = cfg.model.llm or join(prepared, "base_llm")
    if cfg.model.llm:
        check_llm(str(localize_dir(cfg.model.llm, opts)))
    fs, root = get_fs(prepared, opts)
    if fs.exists(f"{root}/{FEATURE_STATS}"):  # written last: the rest is there too
        return tokenizer_uri, llm_uri, prepared
    staging = Path(tempfile.mkdtemp(prefix="vtok-prepared-"))
    if not cfg.text_tokenizer:
        captions = [r["caption"] for r in train_ds.select_columns(["caption"]).iter_rows() if r["caption"]]
        train_word_tokenizer([*captions, *template_texts()], staging / TEXT_TOKENIZER_DIR)
    if not cfg.model.llm:
        vocab = len(load_text_tokenizer(localize_dir(tokenizer_uri, opts) if cfg.text_tokenizer
                                        else staging / TEXT_TOKENIZER_DIR))
        save_tiny_llm(staging / "base_llm", vocab_size=vocab, seed=cfg.train.seed)
    stats = FeatureStats()
    columns = [c for c in ("key_tokens", "residual_features", "frame_tokens") if c in train_ds.schema().names]
    for batch in train_ds.limit(cfg.stats_clips).select_columns(["sample_key", *columns]).iter_batches(
            batch_size=64, batch_format="numpy"):
        stats.update(collate_tokens(batch, columns=columns))
    stats.finish().save(staging / FEATURE_STATS)
    for path in sorted(staging.rglob("*"), key=lambda p: (p.name == FEATURE_STATS, str(p))):
        if path.is_file():
            fs.makedirs(f"{root}/{path.parent.relative_to(staging)}".rstrip("/."), exist_ok=True)
            fs.put_file(str(path), f"{root}/{path.relative_to(staging)}")
    return tokenizer_uri, llm_uri, prepared


def loop_spec(cfg: TrainMLLMConfig) -> LoopSpec:
    """What every worker's loop is told: the settings, and MLflow's (the config as parameters, credentials
    and storage options left out)."""
    return LoopSpec(run_uri=cfg.output, train=cfg.train, checkpoint=cfg.checkpoint,
                    storage_options=cfg.storage_options or None, use_gpu=cfg.scaling.use_gpu,
                    cpus_per_worker=cfg.scaling.cpus_per_worker,
                    mlflow_uri=cfg.tracking.mlflow_uri, experiment=cfg.tracking.experiment,
                    run_name=join(cfg.output, "").rstrip("/").rsplit("/", 1)[-1],
                    params={k: v for k, v in flat_config(redact(cfg)).items() if not k.startswith("storage_options")})


def run_train_mllm(cfg: TrainMLLMConfig, progress: bool = True) -> dict[str, Any]:
    """Check, prepare, bind, train; returns what the run did (for the console and the report)."""
    manifest = check_data(cfg)
    if cfg.tracking.mlflow_uri:
        check_mlflow(cfg.tracking.mlflow_uri, cfg.tracking.experiment)
    train_ds, held_ds = _split_rows(cfg)
    if held_ds.count() == 0:
        raise InputError(f"the held-out split of {cfg.split.heldout_data or cfg.data} is empty: raise "
                         f"split.heldout_fraction or give split.heldout_data")
    data_record = {"data": cfg.data, "fingerprint": manifest["fingerprint"], "identity": manifest.get("identity"),
                   "heldout_fraction": cfg.split.heldout_fraction, "salt": cfg.split.salt,
                   "heldout_data": cfg.split.heldout_data}
    identity = {"kind": "mllm", "model": dataclasses.asdict(cfg.model), "text_tokenizer": cfg.text_tokenizer,
                "data_fingerprint": manifest["fingerprint"], "data_identity": manifest.get("identity"),
                "split": dataclasses.asdict(cfg.split), "seed": cfg.train.seed}
    resumed = bind_training_run(cfg.output, identity, cfg.storage_options or None)
    tokenizer_uri, llm_uri, prepared = prepare(cfg, train_ds)
    task = MLLMTask(cfg.model, llm_uri, tokenizer_uri, prepared, cfg.train.seed, data_record,
                    json.loads(json.dumps(dataclasses.asdict(cfg), default=str)), cfg.storage_options or None)
    if sum(f["bytes"] for f in manifest["shards"]) <= cfg.materialize_bytes:
        # Small enough to hold: epochs then replay blocks from the object store instead of re-reading shards.
        train_ds = train_ds.materialize()
    spec = loop_spec(cfg)
    logger.info("%s run %s: %s tokens, LM %s (%s)", "resuming" if resumed else "starting", cfg.output,
                cfg.model.tokens, llm_uri, cfg.model.llm_mode)
    name = "vtok-mllm-" + hashlib.sha256(cfg.output.encode()).hexdigest()[:12]
    fit(task, spec, {"train": train_ds}, cfg.scaling, name=name, progress=progress)
    return {"resumed": resumed, "heldout": held_ds}
