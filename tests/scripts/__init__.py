"""Tests of the scripts in scripts/ that are more than benchmarks."""
