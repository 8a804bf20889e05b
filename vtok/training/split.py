"""The held-out split: a clip is held out by a hash of its sample key, a salt and a fraction.

sha256 (not Python's hash, which is salted per process) makes the split the same on every machine,
process and run; the salt gives independent splits of the same keys. Training skips what is held out
and evaluation reads only that, so they never share a clip.
"""

from __future__ import annotations

import hashlib

_SCALE = float(1 << 64)


def heldout_score(sample_key: str, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by (salt, sample_key)."""
    digest = hashlib.sha256(f"{salt}\0{sample_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def is_heldout(sample_key: str, fraction: float, salt: str = "") -> bool:
    """True for about `fraction` of all keys (0: none, 1: all), the same keys on every machine."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1], got {fraction!r}")
    return heldout_score(sample_key, salt) < fraction
