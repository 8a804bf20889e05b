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

import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.train.config import RunEvalSettings
from pipelines.train.data import (
    SplitSettings,
    TrainJobConfig,
    bind_job,
    check_frame_sampling,
    check_heldout,
    check_manifest,
    check_tracking,
    config_record,
    data_record,
    fit_job,
    loop_spec,
    materialize_if_small,
    split_rows,
)
from schemas.checkpoint import CONFIG, DATA, FEATURE_STATS, G_PHI, LLM_DIR, TEXT_TOKENIZER_DIR, TRAINABLE
from schemas.tokens import residual_grid_of
from vtok.errors import InputError
from vtok.models.mllm_config import MLLMConfig
from vtok.storage import join, localize_dir

__all__ = ["MLLMTask", "SplitSettings", "TrainMLLMConfig", "check_data", "loop_spec", "prepare", "run_train_mllm"]

logger = logging.getLogger(__name__)


@dataclass
class TrainMLLMConfig(TrainJobConfig):
    """The MLLM training job, minus where Ray runs (jobs/ adds that); the keys every training job has:
    pipelines.train.data.TrainJobConfig."""

    model: MLLMConfig = field(default_factory=MLLMConfig)
    """The MLLM (model.llm, model.tokens, model.frames, ...)."""
    text_tokenizer: str | None = None
    """HF tokenizer directory; None trains a word-level one from the corpus into RUN/text_tokenizer."""
    eval: RunEvalSettings = field(default_factory=RunEvalSettings)
    """Evaluations each checkpoint owes before checkpoint.keep_last may delete it (eval.required_suites)."""


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
    manifest = check_manifest(cfg.data, cfg.storage_options or None)
    check_frame_sampling(manifest, cfg.data, cfg.model.tokens, cfg.model.frames)
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
    columns = ["sample_key", "caption", "attributes", "key_tokens"]
    columns.append("residual_features" if cfg.model.tokens == "vtok" else "frame_tokens")
    return split_rows(cfg.data, columns, cfg.split, cfg.storage_options or None,
                      in_memory_bytes=cfg.materialize_bytes)


PREPARED_DIR = "prepared"
"""RUN/prepared/: what every worker of the run shares, made once by the driver (reused on resume)."""


def prepare(cfg: TrainMLLMConfig, train_ds: Any, residual_grid: int = 1) -> tuple[str, str, str]:
    """(tokenizer dir, base LM dir, prepared dir) URIs: RUN/prepared/ holds the text tokenizer (unless one is
    given), the tiny base LM (unless model.llm is given) and the feature statistics, written once.
    `residual_grid`: the data's tokenizer.residual_grid, recorded in the statistics the model is built from."""
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
    stats = FeatureStats(residual_grid=residual_grid)
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


def run_train_mllm(cfg: TrainMLLMConfig, progress: bool = True) -> dict[str, Any]:
    """Check, prepare, bind, train; returns what the run did (for the console and the report)."""
    manifest = check_data(cfg)
    check_tracking(cfg)
    train_ds, held_ds = _split_rows(cfg)
    check_heldout(held_ds, cfg)
    record = data_record(cfg, manifest)
    resumed = bind_job(cfg, "mllm", cfg.model, manifest, text_tokenizer=cfg.text_tokenizer)
    tokenizer_uri, llm_uri, prepared = prepare(cfg, train_ds, residual_grid_of(manifest.get("tokenizer")))
    task = MLLMTask(cfg.model, llm_uri, tokenizer_uri, prepared, cfg.train.seed, record, config_record(cfg),
                    cfg.storage_options or None)
    train_ds = materialize_if_small(train_ds, manifest, cfg.materialize_bytes)
    logger.info("%s run %s: %s tokens, LM %s (%s)", "resuming" if resumed else "starting", cfg.output,
                cfg.model.tokens, llm_uri, cfg.model.llm_mode)
    fit_job("mllm", task, cfg, train_ds, progress=progress, required_suites=cfg.eval.required_suites)
    _log_retention(cfg)
    return {"resumed": resumed, "heldout": held_ds}


def _log_retention(cfg: TrainMLLMConfig) -> None:
    """The last retention pass's reason for keeping more than checkpoint.keep_last, in the driver's log (a local
    Ray does not forward the workers' logs)."""
    from pipelines.train.metrics import read_metrics
    from pipelines.train.retention import retention_summary

    last = retention_summary(read_metrics(cfg.output, cfg.storage_options or None)) or {}
    if last.get("note"):
        logger.warning("after step %d: %s", last["step"], last["note"])
