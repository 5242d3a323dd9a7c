"""Figures: read computed arrays or result files, write PNGs. Never recompute experiments."""
