"""Evaluation: accuracies (UA/RA/TA), mask similarity, the topology test over seeds, and output
distances."""

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
from .topology import (
    beyond_control,
    distance_travelled,
    format_topology_table,
    lopo_auc,
    matched_controls,
    quantity_comparison,
    topology_report,
    two_sample_test,
)

__all__ = [
    "unlearning_accuracies", "similarity", "jaccard", "hamming", "delta_jaccard",
    "mask_metrics", "filter_metrics", "noise_floor", "weight_distance",
    "js_divergence", "mean_js", "kl_divergence", "log_softmax",
    "topology_report", "format_topology_table", "two_sample_test", "lopo_auc",
    "distance_travelled", "beyond_control", "matched_controls", "quantity_comparison",
]
