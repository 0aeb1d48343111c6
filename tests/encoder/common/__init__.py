"""Tests of ``encoder.common``."""
