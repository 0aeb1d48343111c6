"""Tests of ``encoder.training``."""
