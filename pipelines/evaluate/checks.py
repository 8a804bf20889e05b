"""What `vtok eval` checks before any Ray work: the checkpoints, the held-out data, and that they fit together.

Each refusal is one InputError naming the key or URI to fix (exit code 2):

- checkpoint= / compare= / decoder= name complete checkpoints (a run: its latest complete one; a step folder
  without its `complete` marker is refused) of the right kind (an MLLM, a decoder);
- data= is a committed token dataset made by the tokenizer the checkpoints were trained on, whose clips carry
  the shapes world's ground truth (`attributes`) and, for generation, a caption;
- no held-out clip is a training clip of any evaluated checkpoint (by sample key, against the training dataset
  its data.json names);
- the decoder reads the tokens the MLLM generates (the same token mode, widths and key count) and the data's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from schemas.checkpoint import CONFIG, DATA, parse_step
from schemas.tokens import frame_sampling_tokens, num_key_tokens, residual_grid_of, vtok_tokens
from vtok.errors import InputError
from vtok.storage import join, parent, read_json


@dataclass(frozen=True)
class MLLMCheckpoint:
    """A resolved MLLM checkpoint: where it is, what it is, and what it was trained on."""

    key: str
    """The config key that named it (checkpoint, compare)."""
    given: str
    """What the user gave (a run or a step folder)."""
    uri: str
    """The complete checkpoint folder."""
    run: str
    """Its run folder (results go under RUN/eval/)."""
    name: str
    """The checkpoint's folder name, e.g. step_00000280."""
    step: int
    """Its training step."""
    record: dict[str, Any]
    """Its config.json (the model's "mllm" section, feature_dim, num_key, ...)."""
    data: dict[str, Any]
    """Its data.json: the training dataset, its fingerprint, the split."""

    @property
    def tokens(self) -> str:
        """The model's token mode: vtok or frame_sampling."""
        return str(self.record["mllm"].get("tokens", "vtok"))

    @property
    def frames(self) -> int | None:
        """K, the frames per clip the frame-sampling baseline reads (None: every frame)."""
        frames = self.record["mllm"].get("frames")
        return int(frames) if frames else None


def _read_record(uri: str, name: str, key: str, given: str, opts: dict[str, Any] | None) -> dict[str, Any]:
    try:
        record = read_json(join(uri, name), opts)
    except (OSError, ValueError) as err:
        raise InputError(f"{key}={given}: cannot read its {name} ({err})") from None
    if not isinstance(record, dict):
        raise InputError(f"{key}={given}: the checkpoint {uri} has no {name}")
    return record


def mllm_checkpoint(given: str, key: str, opts: dict[str, Any] | None) -> MLLMCheckpoint:
    """The complete MLLM checkpoint `given` names (InputError naming `key` otherwise)."""
    from vtok.training.checkpoint_ref import resolve_checkpoint

    uri = resolve_checkpoint(given, key, opts).rstrip("/")
    record = _read_record(uri, CONFIG, key, given, opts)
    if "mllm" not in record:
        raise InputError(f"{key}={given}: not an MLLM checkpoint (its {CONFIG} has no 'mllm' section)")
    data = _read_record(uri, DATA, key, given, opts)
    name = uri.rsplit("/", 1)[-1]
    step = parse_step(name)
    assert step is not None, uri  # resolve_checkpoint returns step folders only
    return MLLMCheckpoint(key=key, given=given, uri=uri, run=parent(parent(uri)), name=name, step=step,
                          record=record, data=data)


def sample_keys(data: str, opts: dict[str, Any] | None, columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every committed clip of the token dataset `data`, in its order: {"sample_key", *columns} (those it has).

    Parquet shards are read for these columns alone; WebDataset shards are read whole.
    """
    import pyarrow.parquet as pq

    from vtok.dataset import read_shard_table, shard_uris
    from vtok.storage import get_fs

    wanted = ["sample_key", *columns]
    rows: list[dict[str, Any]] = []
    for uri in shard_uris(data, opts):
        if uri.endswith(".parquet"):
            fs, path = get_fs(uri, opts)
            with fs.open(path, "rb") as f:
                pf = pq.ParquetFile(f)
                present = [c for c in wanted if c in pf.schema_arrow.names]
                table = pf.read(columns=present)
        else:
            table = read_shard_table(uri, opts)
            table = table.select([c for c in wanted if c in table.column_names])
        values = {c: table.column(c).to_pylist() for c in table.column_names}
        rows += [{c: values[c][i] if c in values else None for c in wanted} for i in range(table.num_rows)]
    return rows


def check_held_out(heldout: list[str], ckpt_key: str, ckpt_given: str, data_record: dict[str, Any], data: str,
                   opts: dict[str, Any] | None, cache: dict[str, set[str]]) -> None:
    """Refuse held-out clips that the checkpoint trained on: any sample key of its training dataset.

    `cache` maps a training dataset URI to its keys, so checkpoints trained on the same data read it once.
    """
    train = data_record.get("data")
    if not train:
        raise InputError(f"{ckpt_key}={ckpt_given}: its {DATA} does not name its training data, so data={data} "
                         f"cannot be checked to be held out")
    if train not in cache:
        try:
            cache[train] = {str(r["sample_key"]) for r in sample_keys(train, opts)}
        except (OSError, ValueError) as err:
            raise InputError(f"{ckpt_key}={ckpt_given}: its training data {train} ({DATA}) cannot be read to "
                             f"check that data={data} is held out ({err})") from None
    shared = [k for k in heldout if k in cache[train]]
    if shared:
        raise InputError(f"data={data}: {len(shared)} of its {len(heldout)} clips are training clips of "
                         f"{ckpt_key}={ckpt_given} (its training data {train}), e.g. sample_key {shared[0]}; "
                         f"evaluate on clips the model never saw")


def check_data_fits(ckpt: MLLMCheckpoint, manifest: dict[str, Any], data: str) -> None:
    """Refuse held-out tokens the MLLM cannot read: another tokenizer, width or key count, no frame_tokens."""
    from pipelines.train.data import check_frame_sampling
    from pipelines.train.decoder_checks import data_widths

    trained = ckpt.data.get("fingerprint")
    if trained and manifest.get("fingerprint") != trained:
        raise InputError(f"data={data}: tokens of tokenizer fingerprint {str(manifest.get('fingerprint'))[:16]}, "
                         f"but {ckpt.key}={ckpt.given} was trained on tokens of {str(trained)[:16]}; tokenize the "
                         f"held-out clips with the same tokenizer")
    d, s = data_widths(manifest)
    if int(ckpt.record.get("feature_dim", d)) != d or int(ckpt.record.get("num_key", s)) != s:
        raise InputError(f"data={data}: tokens D={d}, S={s}; {ckpt.key}={ckpt.given} reads "
                         f"D={ckpt.record.get('feature_dim')}, S={ckpt.record.get('num_key')}")
    check_frame_sampling(manifest, data, ckpt.tokens, ckpt.frames)


def check_decoder_pair(ckpt: MLLMCheckpoint, decoder_given: str, decoder_cfg: Any) -> None:
    """Refuse a decoder that cannot read what the MLLM generates, naming both keys."""
    from pipelines.decode.generate import check_pair

    if decoder_cfg.tokens != ckpt.tokens:
        raise InputError(f"decoder={decoder_given} reads {decoder_cfg.tokens} tokens, but {ckpt.key}={ckpt.given} "
                         f"is a {ckpt.tokens} MLLM (model.tokens): give a decoder trained on {ckpt.tokens} tokens")
    check_pair(ckpt.record, decoder_cfg, ckpt.given, decoder_given)


def token_budget(ckpt: MLLMCheckpoint, manifest: dict[str, Any]) -> int | None:
    """Visual tokens per clip the MLLM sees on this data: S + r*r*R (vtok; r = tokenizer.residual_grid, 1 by
    default) or K x S (frame sampling, K = model.frames or T); None when the clips' frame counts make it differ
    from clip to clip."""
    tokenizer = manifest.get("tokenizer", {})
    grid, stride = int(tokenizer.get("grid") or 0), int(tokenizer.get("residual_stride") or 1)
    counts = [int(t) for t in manifest.get("frame_counts", {})]
    if ckpt.tokens == "vtok":
        budgets = {vtok_tokens(t, grid, stride, residual_grid_of(tokenizer)) for t in counts}
    elif ckpt.frames:
        budgets = {min(ckpt.frames, t) * num_key_tokens(grid) for t in counts}
    else:
        budgets = {frame_sampling_tokens(t, grid) for t in counts}
    return budgets.pop() if len(budgets) == 1 else None


def data_id(manifest: dict[str, Any]) -> str:
    """An identity of a token dataset's committed contents: the sha256 of its shards' sha256s, in order."""
    import hashlib

    listing = json.dumps([s.get("sha256") for s in manifest.get("shards", [])])
    return hashlib.sha256(listing.encode()).hexdigest()
