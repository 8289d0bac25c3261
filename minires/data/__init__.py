"""CIFAR-10 loading, preprocessing and mini-batch iteration (files read on the host, batches made on
the backend's device)."""
from .cifar import (ARCHIVE_NAME, CIFAR10_CLASSES, CIFAR10_MD5, CIFAR10_URL, FOLDER_NAME,
                    CorruptArchiveError, DatasetNotFoundError, SafeUnpickler, UnsafePickleError,
                    default_cache_dir, download_url, extract_archive, find_cifar10, load_batch,
                    load_cifar10, load_class_names, open_url)
from .loader import ArrayLoader, make_cifar10_loaders, make_cifar10_test_loader, shard_bounds, training_stats
from .transforms import (channel_stats, check_preprocessing, crop_flip, crop_flip_at, draw_crop_flip, normalize,
                         normalize_crop_flip, pixel_mean, preprocessing_entry, random_crop_flip, unit_scale_stats)

__all__ = [
    "ARCHIVE_NAME", "CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "FOLDER_NAME",
    "CorruptArchiveError", "DatasetNotFoundError", "SafeUnpickler", "UnsafePickleError",
    "default_cache_dir", "download_url", "extract_archive", "find_cifar10", "load_batch",
    "load_cifar10", "load_class_names", "open_url",
    "ArrayLoader", "make_cifar10_loaders", "make_cifar10_test_loader", "shard_bounds", "training_stats",
    "channel_stats", "check_preprocessing", "crop_flip", "crop_flip_at", "draw_crop_flip", "normalize",
    "normalize_crop_flip", "pixel_mean", "preprocessing_entry", "random_crop_flip", "unit_scale_stats",
]
