"""A first look after training: held-out multiple-choice accuracy per category of the run's latest checkpoint.

TV-Align's understanding scoring (vtok.eval.tv_align.understanding_hits: the candidates' log-likelihood under
the model, as lm-eval-harness scores multiple choice) on up to `limit` held-out clips, in the driver. The
TV-Align evaluation job measures this and more at scale.
"""

from __future__ import annotations

import logging
from typing import Any

from vtok.storage import localize_dir

logger = logging.getLogger(__name__)


def load_latest(run_uri: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The run's latest complete checkpoint as a VTokLM (one call: VTokLM.from_pretrained on its folder)."""
    from vtok.models.mllm import VTokLM
    from vtok.training.checkpoint import latest_complete

    latest = latest_complete(run_uri, storage_options)
    if latest is None:
        raise FileNotFoundError(f"run {run_uri}: no complete checkpoint")
    return VTokLM.from_pretrained(localize_dir(latest.uri, storage_options))


def heldout_accuracy(run_uri: str, heldout: Any, storage_options: dict[str, Any] | None = None,
                     limit: int = 200) -> dict[str, float]:
    """{category: accuracy, ..., "overall": accuracy, "clips": n} over the held-out split's questions."""
    from vtok.eval.questions import parse_attributes
    from vtok.eval.tv_align import category_accuracy, understanding_hits

    model = load_latest(run_uri, storage_options).eval()
    rows = [row for row in heldout.limit(limit).iter_rows() if parse_attributes(row.get("attributes")) is not None]
    accuracy = category_accuracy(understanding_hits(model, rows)) if rows else {"overall": (0.0, 0, 0.0, 1.0)}
    out = {category: value for category, (value, _, _, _) in sorted(accuracy.items()) if category != "overall"}
    out["overall"] = accuracy["overall"][0]
    out["clips"] = float(len(rows))
    return out
