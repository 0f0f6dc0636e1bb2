"""Mask-similarity metrics (defined in ``unprune_jax.masks``; re-exported here)."""

from ..masks import delta_jaccard, hamming, jaccard, similarity

__all__ = ["similarity", "jaccard", "hamming", "delta_jaccard"]
