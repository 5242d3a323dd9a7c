"""Datasets read from their official files: uint8 (N, C, H, W) images and int64 labels."""

from menet.data.errors import DatasetError
from menet.data.mnist import ImageSet, default_data_dir, load_idx_dataset

__all__ = ["DatasetError", "ImageSet", "default_data_dir", "load_idx_dataset"]
