"""Evaluation: accuracies (UA/RA/TA) and mask similarity."""

from .accuracy import unlearning_accuracies
from .masks import delta_jaccard, hamming, jaccard, similarity

__all__ = ["unlearning_accuracies", "similarity", "jaccard", "hamming", "delta_jaccard"]
