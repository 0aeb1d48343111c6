"""Tests of ``encoder.videoprism``."""
