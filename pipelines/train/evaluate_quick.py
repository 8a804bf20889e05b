"""A first look after training: held-out multiple-choice accuracy per category of the run's latest checkpoint.

Scored as lm-eval-harness scores multiple choice (the candidates' log-likelihood under the model), on up to
`limit` held-out clips, in the driver. The TV-Align evaluation job measures this and more at scale.
"""

from __future__ import annotations

import logging
from collections import defaultdict
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
    import numpy as np

    from vtok.eval.questions import parse_attributes, questions_for

    model = load_latest(run_uri, storage_options).eval()
    hits: dict[str, list[bool]] = defaultdict(list)
    clips = 0
    for row in heldout.limit(limit).iter_rows():
        attrs = parse_attributes(row.get("attributes"))
        if attrs is None:
            continue
        clips += 1
        visual = {k: np.asarray([np.asarray(x, np.float32) for x in row[k]], np.float32) for k in
                  ("key_tokens", "residual_features", "frame_tokens") if row.get(k) is not None}
        for q in questions_for(attrs):
            scores = model.score_choices(visual, q.text, q.candidates)
            hits[q.category].append(q.candidates[int(np.argmax(scores))] == q.answer)
    out = {category: float(np.mean(v)) for category, v in sorted(hits.items())}
    every = [h for v in hits.values() for h in v]
    out["overall"] = float(np.mean(every)) if every else 0.0
    out["clips"] = float(clips)
    return out
