"""Data layer (docs/formats.md): training RecordIO, verification .bin sets, augmentation, synthetic data."""
from .errors import DataError
from .recordio import MS1MV2Writer, RecordReader, read_property, write_property
from .records import FaceRecordDataset, ShardedBatchSampler, build_train_loader
from .transforms import BatchAugment, color_jitter, random_mirror, to_input
from .verification_bin import decode_image, encode_image, find_bins, load_bin, safe_unpickle, write_bin
from . import synthetic

__all__ = [
    "DataError", "FaceRecordDataset", "ShardedBatchSampler", "build_train_loader", "to_input", "random_mirror",
    "color_jitter", "BatchAugment", "load_bin", "write_bin", "find_bins", "read_property", "write_property",
    "decode_image", "encode_image", "safe_unpickle", "RecordReader", "MS1MV2Writer", "synthetic",
]
