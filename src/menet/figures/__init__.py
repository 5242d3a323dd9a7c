"""Figures: read computed arrays or result files, write PNGs. Never recompute experiments."""

from menet.figures.features import class_distances, plot_distance_cdfs, plot_tsne, tsne_embedding
from menet.figures.robustness import plot_accuracy_curves

__all__ = ["class_distances", "plot_accuracy_curves", "plot_distance_cdfs", "plot_tsne", "tsne_embedding"]
