"""Datasets read from their official files: uint8 (N, C, H, W) images and int64 labels."""

from menet.data.augment import (
    Augmentation,
    augment,
    draw_augmentation,
    iterate_batches,
    random_crop,
    random_flip,
    to_float,
)
from menet.data.errors import DatasetError
from menet.data.imageset import ImageSet
from menet.data.mnist import load_idx_dataset
from menet.data.registry import DATASETS, DatasetSpec, get_dataset_spec, load_dataset, resolve_data_dir

__all__ = [
    "DATASETS", "Augmentation", "DatasetError", "DatasetSpec", "ImageSet", "augment", "draw_augmentation", "get_dataset_spec",
    "iterate_batches", "load_dataset", "load_idx_dataset", "random_crop", "random_flip",
    "resolve_data_dir", "to_float",
]
