"""The Ray Data stages of `vtok eval`: the models on (GPU) actors, the judge on CPU tasks.

    held-out token rows -> TVAlignModels (actor pool: the MLLM, and the decoder when there is one, each loaded
    once per actor; torch.inference_mode; cuda when the actor sees a GPU)
      understanding    every templated question of the clip, scored by its candidates' log-likelihood (also
                       by a baseline MLLM, when compared)
      generated        the clip's caption -> the MLLM's visual tokens -> the decoder -> frames
      reconstructed    the clip's own tokens -> the decoder -> frames
    -> judge_batch (CPU tasks): the judge reads both videos against the clip's attributes

Hits and readings travel as JSON strings (one per clip), frames as uint8 arrays [T, H, W, 3]; frames the
driver does not need (neither VBench nor the report's strip) are dropped in the judge task as an empty
[0, 0, 0, 3] array, so only hits come back for most clips. Each clip's sampling noise is fixed by the seed
and its sample key (pipelines.decode.reconstruct.clip_seed): its videos do not depend on batch or actor.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

import numpy as np

from pipelines.decode.reconstruct import Reconstructor, pick_device

VIDEO_COLUMNS: dict[str, str] = {"generation": "generated", "reconstruction": "reconstructed"}
"""TV-Align metric -> the column holding its frames."""
EMPTY_FRAMES = np.zeros((0, 0, 0, 3), np.uint8)
"""What a dropped video becomes (the same ndim as a real one, so the column stays a tensor column)."""


def _objects(values: list[Any]) -> np.ndarray:
    holder = np.empty(len(values), dtype=object)
    holder[:] = values
    return holder


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=lambda x: x.item() if hasattr(x, "item") else str(x))


class TVAlignModels:
    """Ray Data callable class: a numpy batch of token rows -> their understanding hits and videos.

    `metrics` names what to measure of "understanding", "generation", "reconstruction"; the last two need
    `decoder` (a complete decoder checkpoint URI), loaded through pipelines.decode.reconstruct.Reconstructor.
    `compare`: a second MLLM (a baseline) whose understanding of the same clips comes in "compare_understanding",
    in the same pass (one actor start, one read of the clips).
    """

    def __init__(self, mllm: str, metrics: Collection[str], decoder: str | None = None, compare: str | None = None,
                 storage_options: dict[str, Any] | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, device: str = "auto", num_threads: int = 1) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.metrics = set(metrics)
        self.device = pick_device(device)
        self.mllm = self._load(mllm, storage_options)
        self.compare = self._load(compare, storage_options) if compare else None
        self.decoder: Reconstructor | None = None
        if self.metrics & set(VIDEO_COLUMNS):
            assert decoder is not None, "generation and reconstruction need a decoder"
            self.decoder = Reconstructor(decoder, storage_options, steps=steps, guidance=guidance, seed=seed,
                                         device=self.device, num_threads=num_threads)
            self.decoder_columns = self._decoder_columns()

    def _load(self, uri: str, storage_options: dict[str, Any] | None) -> Any:
        from vtok.models.mllm import VTokLM
        from vtok.storage import localize_dir

        return VTokLM.from_pretrained(localize_dir(uri, storage_options)).to(self.device).eval()

    def _decoder_columns(self) -> list[str]:
        from pipelines.train.decoder_checks import token_columns

        assert self.decoder is not None
        return token_columns(self.decoder.cfg)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        with torch.inference_mode():
            keys = [str(k) for k in batch["sample_key"]]
            rows = [{c: batch[c][i] for c in batch} for i in range(len(keys))]
            out: dict[str, Any] = {c: batch[c] for c in ("sample_key", "caption", "attributes") if c in batch}
            if "understanding" in self.metrics:
                out["understanding"] = np.array([_json(self._understanding(self.mllm, row)) for row in rows])
            if self.compare is not None:
                out["compare_understanding"] = np.array([_json(self._understanding(self.compare, row))
                                                         for row in rows])
            if "generation" in self.metrics:
                out["generated"] = _objects(self._generated(keys, rows))
            if "reconstruction" in self.metrics:
                assert self.decoder is not None
                one = {c: batch[c] for c in ("sample_key", "frame_indices", *self.decoder_columns) if c in batch}
                out["reconstructed"] = _objects(self.decoder.frames_of(one))
        return out

    @staticmethod
    def _understanding(model: Any, row: dict[str, Any]) -> dict[str, list[bool]]:
        from vtok.eval.tv_align import understanding_hits

        return {c: v for c, v in understanding_hits(model, [row]).items() if v}

    def _generated(self, keys: list[str], rows: list[dict[str, Any]]) -> list[np.ndarray]:
        from vtok.eval.tv_align import generated_tokens

        assert self.decoder is not None
        made = []
        for key, row in zip(keys, rows):
            caption = row.get("caption")
            if not caption:
                raise ValueError(f"{key}: no caption to generate from")
            made.append(generated_tokens(self.mllm, str(caption)))
        columns = [c for c in self.decoder_columns if c in made[0]]
        batch: dict[str, Any] = {"sample_key": np.array(keys)}
        for c in columns:
            arrays = [m[c] for m in made]
            same = len({a.shape for a in arrays}) == 1
            batch[c] = np.stack(arrays) if same else _objects(arrays)
        return self.decoder.frames_of(batch)


def judge_batch(batch: dict[str, Any], keep: Collection[str] | None = None) -> dict[str, Any]:
    """The judge on a batch of TVAlignModels' output: per video column, "<metric>" (hits JSON) and
    "<metric>_reading" (the judge's reading JSON); frames are kept for the sample keys in `keep` (None: all)
    and dropped (EMPTY_FRAMES) for the others."""
    from vtok.eval.tv_align import judge_hits

    keys = [str(k) for k in batch["sample_key"]]
    out = {k: v for k, v in batch.items() if k not in VIDEO_COLUMNS.values()}
    for metric, column in VIDEO_COLUMNS.items():
        if column not in batch:
            continue
        hits, readings, frames = [], [], []
        for i, key in enumerate(keys):
            video = np.asarray(batch[column][i])
            row_hits, reading = judge_hits(video, batch["attributes"][i], key)
            hits.append(_json({c: v for c, v in row_hits.items() if v}))
            readings.append(_json(reading))
            frames.append(video if keep is None or key in keep else EMPTY_FRAMES)
        out[metric] = np.array(hits)
        out[f"{metric}_reading"] = np.array(readings)
        out[column] = _objects(frames)
    return out
