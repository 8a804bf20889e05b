"""Feeding token datasets to a training loop: batching and padding (needs torch, not Ray)."""

from vtok.training.batching import collate_tokens

__all__ = ["collate_tokens"]
