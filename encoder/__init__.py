"""The VideoPrism side of prism-vlm: video decoding, encoder loading and conversion, features."""

from encoder.features import FeatureCache, encode_clips, extract_features
from encoder.loading import load_encoder
from encoder.video import VideoDecodeError, load_clip

__all__ = ["FeatureCache", "VideoDecodeError", "encode_clips", "extract_features", "load_clip", "load_encoder"]
