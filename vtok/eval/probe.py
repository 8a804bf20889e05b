"""The probe: small classifiers per attribute on a token dataset's columns, held-out accuracy with intervals.

The cheap first look before training an MLLM: does a token mode keep what a label needs? For each mode (which
tokens of a clip a model would see) and each attribute, an MLP (vtok.eval.probe_model) is trained on most clips
and scored on the rest; a mode that a small probe reads well is a mode an MLLM can learn from, and a mode whose
probe sits at chance has lost the attribute. Pure numpy/torch, no Ray: rows are token-row dicts as
vtok.dataset.read_shard_samples gives them.

Modes (MODES, plus frames_K for any K >= 1):

    vtok           key_tokens [S, D] + residual_features [R', D]   S + R' tokens (R' = r*r*R with a residual grid)
    key_only       key_tokens                                      S
    frames_budget  frame_tokens of K evenly spaced frames,         K x S, K = budget_frames(S, R'): frame
                   the most that fit VTok's budget                 sampling at VTok's budget
    frames_K       frame_tokens of K evenly spaced frames          K x S
    all_frames     frame_tokens of every frame                     T x S

A dataset tokenized with `tokenizer.residual_grid=r` gives "vtok" its r*r residual tokens per step as stored
(any [R, r*r, D] or [R*r*r, D] layout: the residual is read as rows of D), so VTok r > 1 is the vtok mode on
such a dataset, and frames_budget follows its larger budget.

Labels: the shapes world's attributes (the `attributes` JSON column): "count" per clip, and each object
attribute (color, size, position, motion, shape) of clips holding exactly one object (a clip with several
objects has no single answer); or any row column (`label_column`) whose value is a scalar.

Split: by sample key alone (sha256 of the key below `test_fraction`), so a clip is on the same side in every
dataset made from the same videos (every grid, T and r of a study), whatever the row order.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vtok.errors import InputError

MODES: tuple[str, ...] = ("vtok", "key_only", "frames_budget", "all_frames")
"""The named modes; frames_K (K >= 1 frames, e.g. frames_2) also works."""
SHAPES_ATTRIBUTES: tuple[str, ...] = ("count", "color", "size", "position", "motion", "shape")
"""The shapes world's attributes the probe can read from the `attributes` column."""
_OBJECT_ATTRIBUTES = frozenset(SHAPES_ATTRIBUTES) - {"count"}
_FRAMES_K = re.compile(r"frames_([1-9][0-9]*)")
FIRST_LOOK = ("the probe is the cheap first look before training an MLLM: a small MLP per attribute on the tokens "
              "each mode keeps; train the MLLM (vtok train mllm) for the answer that counts")
"""What the probe's output says about itself."""


@dataclass
class ProbeConfig:
    """What the probe trains and scores."""

    modes: list[str] = field(default_factory=lambda: list(MODES))
    """Token modes to compare (MODES or frames_K)."""
    attributes: list[str] = field(default_factory=list)
    """Attributes to probe; empty: every shapes-world attribute with at least two classes in the data."""
    label_column: str | None = None
    """A row column to use as the one label instead of the shapes world's attributes."""
    test_fraction: float = 0.2
    """Share of the clips held out for testing, chosen by sample key."""
    seeds: int = 1
    """Classifier initialisations per (mode, attribute); hits pool over them."""
    pool: str = "flat"
    """How a clip's tokens feed the MLP: flat (every token in order) or mean (their mean)."""
    token_dim: int = 8
    """Width each token is projected to before the tokens are concatenated."""
    hidden: int = 64
    """The MLP's hidden width."""
    epochs: int = 120
    """Full-batch Adam steps."""
    lr: float = 3e-3
    """Adam learning rate."""
    weight_decay: float = 1e-3
    """AdamW weight decay."""
    shuffled_control: bool = False
    """Also train on randomly permuted training labels: its accuracy should sit at chance."""

    def __post_init__(self) -> None:
        if not self.modes:
            raise InputError(f"probe modes: empty; give one or more of {', '.join(MODES)} or frames_K")
        for mode in self.modes:
            check_mode(mode)
        if not 0.0 < self.test_fraction < 1.0:
            raise InputError(f"probe test_fraction must be in (0, 1), got {self.test_fraction!r}")
        for name in ("seeds", "token_dim", "hidden", "epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"probe {name} must be an int >= 1, got {value!r}")
        if self.pool not in ("flat", "mean"):
            raise InputError(f"probe pool must be flat or mean, got {self.pool!r}")


@dataclass(frozen=True)
class ProbeScore:
    """The held-out accuracy of one (mode, attribute), pooled over seeds."""

    mode: str
    attribute: str
    hits: int
    """Correct test predictions, summed over seeds."""
    n: int
    """Test predictions: test clips x seeds."""
    lo: float
    """95% Wilson lower bound of hits / n."""
    hi: float
    """95% Wilson upper bound."""
    chance: float
    """Accuracy on the test clips of always answering the training split's most frequent class."""
    tokens: int
    """Tokens per clip the mode keeps."""
    train_clips: int
    test_clips: int
    classes: int
    """Distinct labels in the training split."""
    seed_accuracy: tuple[float, ...]
    """Each seed's accuracy."""
    control: float | None = None
    """Accuracy of the shuffled-label control (pooled over seeds), when run."""

    @property
    def accuracy(self) -> float:
        return self.hits / self.n


def budget_frames(s: int, r: int) -> int:
    """K for frame sampling at VTok's budget: the most frames whose K x S tokens do not exceed S + R.

    Never more tokens than VTok (a baseline given more tokens would not test the claim), and at least one
    frame (a clip has one). At S = 16, R = 7 (T = 8): S + R = 23, so K = 1 (16 tokens), not K = 2 (32).
    """
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise ValueError(f"S (key tokens per clip) must be an int >= 1, got {s!r}")
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise ValueError(f"R (residual tokens per clip) must be an int >= 0, got {r!r}")
    return max(1, (s + r) // s)


def check_mode(mode: str) -> None:
    """InputError naming `mode` unless it is one of MODES or frames_K."""
    if mode not in MODES and (not isinstance(mode, str) or _FRAMES_K.fullmatch(mode) is None):
        raise InputError(f"probe mode {mode!r} is unknown; known: {', '.join(MODES)}, frames_K (e.g. frames_2)")


def _residual(row: Mapping[str, Any], d: int) -> np.ndarray:
    res = np.asarray(row.get("residual_features", np.zeros((0, d), np.float32)), dtype=np.float32)
    return res.reshape(-1, d)


def mode_segments(row: Mapping[str, Any], mode: str) -> list[tuple[str, np.ndarray]]:
    """The tokens `mode` keeps of one row, as (column, [n, D]) segments in sequence order."""
    check_mode(mode)
    key = np.asarray(row["key_tokens"], dtype=np.float32)  # [S, D]
    s, d = key.shape
    if mode == "key_only":
        return [("key_tokens", key)]
    if mode == "vtok":
        return [("key_tokens", key), ("residual_features", _residual(row, d))]
    if row.get("frame_tokens") is None:
        raise InputError(f"probe mode {mode!r} needs the frame_tokens column; tokenize with "
                         "tokenizer.frame_tokens=true")
    frames = np.asarray(row["frame_tokens"], dtype=np.float32)  # [T, S, D]
    t = frames.shape[0]
    if mode == "all_frames":
        k = t
    elif mode == "frames_budget":
        k = min(t, budget_frames(s, len(_residual(row, d))))
    else:
        match = _FRAMES_K.fullmatch(mode)
        assert match is not None
        k = int(match.group(1))
        if k > t:
            raise InputError(f"probe mode {mode!r} needs {k} frames; clip {row.get('sample_key')!r} has T={t}")
    pick = np.linspace(0, t - 1, k).round().astype(np.int64)  # as vtok.training.mllm_batch.even_frames
    return [("frame_tokens", frames[pick].reshape(k * s, d))]


def mode_tensor(rows: Sequence[Mapping[str, Any]], mode: str) -> tuple[np.ndarray, list[slice]]:
    """([N, L, D] float32 tokens of every row, the L-slices of each segment), for rows of equal shapes."""
    per_row = [mode_segments(row, mode) for row in rows]
    shapes = {tuple(a.shape for _, a in segs) for segs in per_row}
    if len(shapes) != 1:
        raise InputError(f"probe mode {mode!r}: clips differ in token shapes {sorted(shapes)[:2]}; probe "
                         "a dataset of one tokenizer and one T")
    bounds, start = [], 0
    for _, arr in per_row[0]:
        bounds.append(slice(start, start + len(arr)))
        start += len(arr)
    x = np.stack([np.concatenate([a for _, a in segs]) for segs in per_row])
    return x, bounds


def clip_label(row: Mapping[str, Any], attribute: str, label_column: str | None = None) -> str | None:
    """The label of one row, or None when it has none (no attributes, or several objects for an object
    attribute)."""
    from vtok.eval.questions import parse_attributes

    if label_column is not None:
        value = row.get(label_column)
        return None if value is None or (isinstance(value, str) and not value.strip()) else str(value)
    attrs = parse_attributes(row.get("attributes"))
    if attrs is None:
        return None
    objects = list(attrs.get("objects", []))
    if attribute == "count":
        return str(attrs.get("count", len(objects)))
    if len(objects) != 1 or attribute not in objects[0]:
        return None
    return str(objects[0][attribute])


def label_sets(rows: Sequence[Mapping[str, Any]], cfg: ProbeConfig) -> dict[str, list[str | None]]:
    """attribute -> every row's label (None: none), for the attributes `cfg` asks or can find."""
    if cfg.label_column is not None:
        if not any(cfg.label_column in row for row in rows):
            raise InputError(f"probe label_column {cfg.label_column!r}: no row has that column")
        labels = [clip_label(row, "", cfg.label_column) for row in rows]
        if all(v is None for v in labels):
            raise InputError(f"probe label_column {cfg.label_column!r}: every value is empty")
        return {cfg.label_column: labels}
    unknown = [a for a in cfg.attributes if a not in SHAPES_ATTRIBUTES]
    if unknown:
        raise InputError(f"probe attributes {unknown} unknown; known: {', '.join(SHAPES_ATTRIBUTES)} (or set "
                         "label_column)")
    if not any(clip_label(row, "count") is not None for row in rows):
        raise InputError("probe: no labels; no row has shapes-world attributes (set label_column to a column "
                         "that labels the clips)")
    wanted = cfg.attributes or list(SHAPES_ATTRIBUTES)
    out = {a: [clip_label(row, a) for row in rows] for a in wanted}
    if not cfg.attributes:  # every attribute the data can say something about
        out = {a: v for a, v in out.items() if len({x for x in v if x is not None}) >= 2}
    if not out:
        raise InputError("probe: no attribute has two or more classes in this data")
    return out


def held_out_mask(keys: Sequence[str], test_fraction: float) -> np.ndarray:
    """[N] bool, True for the test clips: sha256(sample key) read as a fraction in [0, 1) below test_fraction."""
    out = np.zeros(len(keys), dtype=bool)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(str(key).encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < test_fraction
    return out


def shuffled_labels(labels: Sequence[str], seed: int) -> list[str]:
    """`labels` in a random order fixed by `seed`: the label-shuffled control's training labels."""
    perm = np.random.default_rng(12345 + seed).permutation(len(labels))
    return [labels[i] for i in perm]


def run_probe(rows: Sequence[Mapping[str, Any]], cfg: ProbeConfig) -> list[ProbeScore]:
    """Every (mode, attribute) of `cfg` on `rows`: train on the clips outside the test split, score the rest."""
    from vtok.eval.probe_model import fit_and_score
    from vtok.eval.stats import wilson_interval

    if not rows:
        raise InputError("probe: the dataset has no rows")
    keys = [str(row["sample_key"]) for row in rows]
    if len(set(keys)) != len(keys):
        dup = next(k for k, c in Counter(keys).items() if c > 1)
        raise InputError(f"probe: sample key {dup!r} occurs twice; probe a dataset with unique keys")
    labels = label_sets(rows, cfg)
    test = held_out_mask(keys, cfg.test_fraction)
    scores: list[ProbeScore] = []
    for mode in cfg.modes:
        x_all, bounds = mode_tensor(rows, mode)
        for attribute, values in labels.items():
            has = np.array([v is not None for v in values])
            train_i, test_i = np.flatnonzero(has & ~test), np.flatnonzero(has & test)
            if len(train_i) < 2 or len(test_i) < 1:
                raise InputError(f"probe {attribute!r}: {len(train_i)} training and {len(test_i)} test clips "
                                 "have a label; need at least 2 and 1")
            y_train = [str(values[i]) for i in train_i]
            y_test = [str(values[i]) for i in test_i]
            majority = Counter(y_train).most_common(1)[0][0]
            chance = sum(y == majority for y in y_test) / len(y_test)
            per_seed = [fit_and_score(x_all[train_i], y_train, x_all[test_i], y_test, bounds, cfg, seed)
                        for seed in range(cfg.seeds)]
            hits = sum(per_seed)
            control = None
            if cfg.shuffled_control:
                # A fresh permutation per seed: with few classes one permutation can, by chance, leave the
                # true class the most frequent shuffled label of a cluster, and the control learns it.
                control = sum(fit_and_score(x_all[train_i], shuffled_labels(y_train, seed), x_all[test_i], y_test,
                                            bounds, cfg, seed) for seed in range(cfg.seeds)) / (len(y_test) * cfg.seeds)
            n = len(y_test) * cfg.seeds
            lo, hi = wilson_interval(hits, n)
            scores.append(ProbeScore(mode=mode, attribute=attribute, hits=hits, n=n, lo=lo, hi=hi, chance=chance,
                                     tokens=int(x_all.shape[1]), train_clips=len(train_i), test_clips=len(test_i),
                                     classes=len(set(y_train)), seed_accuracy=tuple(h / len(y_test)
                                                                                    for h in per_seed),
                                     control=control))
    return scores


def probe_table(scores: Sequence[ProbeScore]) -> str:
    """Markdown: one row per attribute (with its chance), one column per mode: accuracy % [95% interval]."""
    modes = list(dict.fromkeys(s.mode for s in scores))
    attributes = list(dict.fromkeys(s.attribute for s in scores))
    by = {(s.mode, s.attribute): s for s in scores}
    tokens = {s.mode: s.tokens for s in scores}
    head = ["attribute (chance)", "n", *(f"{m} ({tokens[m]} tokens)" for m in modes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in attributes:
        first = next(by[(m, a)] for m in modes if (m, a) in by)
        cells = [f"{100 * by[(m, a)].accuracy:.1f} [{100 * by[(m, a)].lo:.1f}, {100 * by[(m, a)].hi:.1f}]"
                 + (f" (shuffled {100 * by[(m, a)].control:.0f})" if by[(m, a)].control is not None else "")
                 if (m, a) in by else "-" for m in modes]
        lines.append(f"| {a} ({100 * first.chance:.0f}) | {first.n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
