"""Evaluation: accuracies (UA/RA/TA), mask similarity and output distances."""

from .accuracy import unlearning_accuracies
from .masks import (
    delta_jaccard,
    filter_metrics,
    hamming,
    jaccard,
    mask_metrics,
    noise_floor,
    similarity,
    weight_distance,
)
from .outputs import js_divergence, kl_divergence, log_softmax, mean_js

__all__ = [
    "unlearning_accuracies", "similarity", "jaccard", "hamming", "delta_jaccard",
    "mask_metrics", "filter_metrics", "noise_floor", "weight_distance",
    "js_divergence", "mean_js", "kl_divergence", "log_softmax",
]
