"""Training data: manifests, the video dataset with skip accounting, buckets and collate functions, and
the offline features dataset."""

from osp_train.data.buckets import BucketSampler, assign_bucket, collate, pad_collate
from osp_train.data.dataset import (
    DataConfig,
    SampleKey,
    Skip,
    SkipCounter,
    UnreadableDataError,
    VideoDataset,
    clip_span,
    derive_seed,
)
from osp_train.data.features import FeatureDataset, FeatureSampler, collate_features
from osp_train.data.manifest import ManifestEntry, read_manifest, write_manifest

__all__ = [
    "BucketSampler",
    "DataConfig",
    "FeatureDataset",
    "FeatureSampler",
    "ManifestEntry",
    "SampleKey",
    "Skip",
    "SkipCounter",
    "UnreadableDataError",
    "VideoDataset",
    "assign_bucket",
    "clip_span",
    "collate",
    "collate_features",
    "derive_seed",
    "pad_collate",
    "read_manifest",
    "write_manifest",
]
