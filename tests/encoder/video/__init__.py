"""Tests of ``encoder.video``."""
