"""Reading a token dataset back: its manifest, its shards, one clip's tensors. Needs no Ray."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.layout import MANIFEST_FILE
from schemas.token_shard import (
    META_FINGERPRINT,
    META_SCHEMA_VERSION,
    META_TOKENIZER,
    TENSOR_NDIM,
    column_to_tensors,
)
from vtok.storage import get_fs, join

if TYPE_CHECKING:  # for annotations only: vtok imports Ray inside the functions that need it
    import ray.data


def read_manifest(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dataset manifest at `uri` (the dataset folder)."""
    fs, path = get_fs(join(uri, MANIFEST_FILE), storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no {MANIFEST_FILE} (not a vtok dataset, or no shard committed yet)")
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def shard_uris(uri: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Committed token shards of a dataset, in order; a single shard file is its own list."""
    if uri.endswith((".parquet", ".tar")):
        return [uri]
    return [join(uri, s["file"]) for s in read_manifest(uri, storage_options)["shards"]]


def read_shard(uri: str, storage_options: dict[str, Any] | None = None, columns: list[str] | None = None) -> pa.Table:
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def read_shard_table(uri: str, storage_options: dict[str, Any] | None = None) -> pa.Table:
    """One committed shard, Parquet or WebDataset, as the schema v1 Arrow table that read_tokens' blocks hold."""
    if uri.endswith(".tar"):
        from schemas.webdataset import samples_to_table

        return samples_to_table(list(iter_webdataset_shard(uri, storage_options)))
    return read_shard(uri, storage_options)


def shard_info(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Schema version, fingerprint, tokenizer config and row count from a shard's footer."""
    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        meta = pq.read_metadata(f)
    kv = meta.metadata or {}
    return {
        "schema_version": kv.get(META_SCHEMA_VERSION, b"").decode(),
        "fingerprint": kv.get(META_FINGERPRINT, b"").decode(),
        "tokenizer": json.loads(kv.get(META_TOKENIZER, b"{}")),
        "rows": meta.num_rows,
    }


def describe(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `vtok inspect` shows: from the manifest for a dataset, from the file itself for one shard.

    "targets": decoder target column -> its shape per clip ([side, side, 3] after T for frames_lowres,
    [C, T', H', W'] for latents); "identity": the dataset's settings (a dataset only).
    """
    from collections import Counter

    if not uri.endswith((".parquet", ".tar")):
        m = read_manifest(uri, storage_options)
        keys = ("format", "schema_version", "fingerprint", "tokenizer", "rows", "frame_counts", "quarantined",
                "errors", "complete")
        return {k: m[k] for k in keys} | {"shards": len(m["shards"]), "targets": m.get("targets", {}),
                                          "identity": m.get("identity", {})}
    if uri.endswith(".tar"):
        samples = list(iter_webdataset_shard(uri, storage_options))
        first = samples[0] if samples else {}
        frames = Counter(len(s["frame_indices"]) for s in samples)
        tokenizer = {"grid": int(round(len(first.get("key_tokens", [])) ** 0.5)),
                     "hidden_size": first["key_tokens"].shape[1] if samples else None}
        # A lone tar records no tokenizer config: read r off its rows, as inspect reads the stride (1).
        steps = len(first.get("frame_indices", [])) - 1
        cells = len(first.get("residual_features", [])) // steps if steps > 0 else 1
        if cells > 1 and int(round(cells**0.5)) ** 2 == cells:
            tokenizer["residual_grid"] = int(round(cells**0.5))
        return {"format": "webdataset", "schema_version": first.get("schema_version", ""),
                "fingerprint": first.get("tokenizer_fingerprint", ""), "tokenizer": tokenizer, "rows": len(samples),
                "frame_counts": {str(t): n for t, n in frames.items()}, "shards": 1, "targets": _targets_of(first)}
    info = shard_info(uri, storage_options)
    table = read_shard(uri, storage_options, ["frame_indices", *_target_columns(uri, storage_options)])
    frames = Counter(len(x) for x in table["frame_indices"].to_pylist())
    first = {name: values[0] for name, values in table_tensors(table.slice(0, 1)).items()} if table.num_rows else {}
    return {"format": "parquet", "schema_version": info["schema_version"], "fingerprint": info["fingerprint"],
            "tokenizer": info["tokenizer"], "rows": info["rows"], "shards": 1,
            "frame_counts": {str(t): n for t, n in frames.items()}, "targets": _targets_of(first)}


def _target_columns(uri: str, storage_options: dict[str, Any] | None) -> list[str]:
    from schemas.targets import TARGET_DTYPES

    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
    return [c for c in TARGET_DTYPES if c in names]


def _targets_of(sample: dict[str, Any]) -> dict[str, list[int]]:
    """The decoder targets one clip carries, as the manifest records them (frames_lowres without its T)."""
    shapes: dict[str, list[int]] = {}
    if sample.get("frames_lowres") is not None:
        shapes["frames_lowres"] = list(sample["frames_lowres"].shape[1:])
    if sample.get("latents") is not None:
        shapes["latents"] = list(sample["latents"].shape)
    return shapes


def table_tensors(table: pa.Table) -> dict[str, list]:
    """Every tensor column of a token table as per-row numpy arrays."""
    return {name: column_to_tensors(table.column(name), ndim) for name, ndim in TENSOR_NDIM.items()
            if name in table.column_names}


def iter_webdataset_shard(uri: str, storage_options: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one WebDataset token tar (tensors as numpy), streamed."""
    from schemas.webdataset import iter_tar

    fs, path = get_fs(uri, storage_options)
    with fs.open(path, "rb") as f:
        yield from iter_tar(f)


def read_shard_samples(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every sample of one token shard, Parquet or WebDataset, as the same dicts.

    Keys are the schema v1 columns (an optional one only where it has a value) plus the shard's
    schema_version, tokenizer_fingerprint and dataset_identity_sha256; tensors are numpy arrays,
    frame_indices a list of ints. The same clip gives equal dicts in both formats.
    """
    from schemas.token_shard import META_IDENTITY, OPTIONAL_FIELDS
    from schemas.webdataset import IDENTITY_FIELD

    optional = {f.name for f in OPTIONAL_FIELDS}
    if uri.endswith(".tar"):
        samples = list(iter_webdataset_shard(uri, storage_options))
    else:
        table = read_shard(uri, storage_options)
        meta = table.schema.metadata or {}
        shard_fields = {"schema_version": meta.get(META_SCHEMA_VERSION, b"").decode(),
                        "tokenizer_fingerprint": meta.get(META_FINGERPRINT, b"").decode()}
        if META_IDENTITY in meta:
            # The sink hashes these very bytes into each WebDataset sample's .json.
            shard_fields[IDENTITY_FIELD] = hashlib.sha256(meta[META_IDENTITY]).hexdigest()
        tensors = _with_empty_widths(table_tensors(table))
        scalars = {name: table.column(name).to_pylist() for name in table.column_names if name not in tensors}
        columns = scalars | tensors
        samples = [{name: values[i] for name, values in columns.items()} | shard_fields
                   for i in range(table.num_rows)]
    # Parquet has a column only where some row of the shard has a value, WebDataset writes None:
    # dropping empty optional values makes both give the same keys.
    return [{k: v for k, v in s.items() if v is not None or k not in optional} for s in samples]


def _with_empty_widths(tensors: dict[str, list]) -> dict[str, list]:
    """Give R=0 residuals their [0, D] shape, as the .npy of a WebDataset sample has it.

    A nested list keeps no width for zero rows, so Parquet reads back [0, 0]: residual_features has
    key_tokens' D, residual_tokens the D' of any other row of the shard.
    """
    keys = tensors.get("key_tokens")
    for name in ("residual_features", "residual_tokens"):
        rows = tensors.get(name)
        if rows is None:
            continue
        known = [r.shape[1] for r in rows if r is not None and len(r)]
        fixed = []
        for i, r in enumerate(rows):
            width = keys[i].shape[1] if name == "residual_features" and keys else (known[0] if known else None)
            fixed.append(r.reshape(0, width) if r is not None and not len(r) and width is not None else r)
        tensors[name] = fixed
    return tensors


def read_tokens(uri: str, storage_options: dict[str, Any] | None = None) -> ray.data.Dataset:
    """The committed shards of a token dataset as a Ray Dataset (needs Ray; imported here only).

    Parquet and WebDataset datasets give the same columns with the same Arrow types (schema v1),
    hence the same rows and batches: tensors as nested lists in rows, object arrays in numpy batches.
    """
    import pyarrow.fs
    import ray.data

    shards = shard_uris(uri, storage_options)
    if not shards:
        raise FileNotFoundError(f"{uri}: the dataset has no committed shards")
    if shards[0].endswith(".tar"):
        # One read task per tar, which builds a schema v1 Arrow block: ray.data.read_webdataset would give
        # columns named by member suffix ("key.npy", "json") and tensor extension types instead.
        return ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards)).map_batches(
            _webdataset_shards_to_table, batch_size=1, batch_format="pyarrow",
            fn_kwargs={"storage_options": storage_options},
        )
    fs, _ = get_fs(shards[0], storage_options)
    # pyarrow's own S3 client ignores AWS_ENDPOINT_URL; going through fsspec keeps one set of settings.
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
    paths = [get_fs(s, storage_options)[1] for s in shards]
    return ray.data.read_parquet(paths, filesystem=filesystem)


def _webdataset_shards_to_table(batch: pa.Table, storage_options: dict[str, Any] | None) -> pa.Table:
    tables = [read_shard_table(uri, storage_options) for uri in batch.column("shard").to_pylist()]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def validate_dataset(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Check every shard against the schema and the manifest. Returns (problems, counts)."""
    from schemas.token_shard import SCHEMA_VERSION, identity_digest, validate_table
    from schemas.tokens import residual_grid_of
    from schemas.webdataset import iter_tar, validate_samples

    problems: list[str] = []
    try:
        manifest = read_manifest(uri, storage_options)
    except (FileNotFoundError, json.JSONDecodeError) as err:
        return [str(err)], {}
    fingerprint = manifest.get("fingerprint")
    grid = manifest.get("tokenizer", {}).get("grid")
    stride = manifest.get("tokenizer", {}).get("residual_stride")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"manifest schema version {manifest.get('schema_version')!r} is not {SCHEMA_VERSION!r}")
    identity = manifest.get("identity")
    targets = manifest.get("targets")  # absent from manifests written before decoder targets existed
    if identity is None:
        problems.append("manifest records no dataset identity (the frame sampling, clip splitting and resize the "
                        "rows were made with): made by an older vtok; re-tokenize to check it")
    if not manifest.get("complete", False):
        problems.append(f"dataset incomplete: {len(manifest['shards'])} shard(s) committed of "
                        f"{manifest.get('num_shards_planned')} planned; rerun the same command to finish it")
    fs, root = get_fs(uri, storage_options)
    listed = {s["file"] for s in manifest["shards"]}
    present: set[str] = set()
    shard_dir = f"{root.rstrip('/')}/shards"
    if fs.exists(shard_dir):
        for p in fs.ls(shard_dir, detail=False):
            name = p.rsplit("/", 1)[-1]
            if not name.startswith(".tmp-"):  # an interrupted local write, never read by anyone
                present.add(f"shards/{name}")
    for stray in sorted(present - listed):
        problems.append(f"{stray}: stray shard, not in the manifest")
    rows_total = 0
    for entry in manifest["shards"]:
        name = entry["file"]
        if name not in present:
            problems.append(f"{name}: missing (listed in the manifest)")
            continue
        with fs.open(f"{root.rstrip('/')}/{name}", "rb") as f:
            data = f.read()
        if len(data) != entry["bytes"]:
            problems.append(f"{name}: {len(data)} bytes, the manifest says {entry['bytes']}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (corrupted or replaced)")
            continue
        import io

        if name.endswith(".tar"):
            samples = list(iter_tar(io.BytesIO(data)))
            rows = len(samples)
            shard_problems = validate_samples(samples, grid, stride,
                                              identity_digest(identity) if identity is not None else None, targets,
                                              residual_grid_of(manifest.get("tokenizer")))
            prints = {s.get("tokenizer_fingerprint") for s in samples}
            if prints - {fingerprint}:
                shard_problems.append(f"tokenizer fingerprint(s) {sorted(p[:12] for p in prints if p)} differ "
                                      f"from the dataset's {str(fingerprint)[:12]}")
        else:
            table = pq.read_table(io.BytesIO(data))
            rows = table.num_rows
            shard_problems = validate_table(table, expected_fingerprint=fingerprint, expected_identity=identity,
                                            expected_targets=targets)
        problems += [f"{name}: {p}" for p in shard_problems]
        if rows != entry["rows"]:
            problems.append(f"{name}: {rows} rows, the manifest says {entry['rows']}")
        rows_total += rows
    for entry in manifest.get("quarantine", []):
        if not fs.exists(f"{root.rstrip('/')}/{entry['file']}"):
            problems.append(f"{entry['file']}: quarantine table missing (listed in the manifest)")
    if rows_total != manifest.get("rows"):
        problems.append(f"{rows_total} rows in the shards, the manifest says {manifest.get('rows')}")
    counts = {"shards": len(manifest["shards"]), "rows": rows_total, "quarantined": manifest.get("quarantined", 0),
              "fingerprint": fingerprint}
    return problems, counts
