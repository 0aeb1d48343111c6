"""Paths of the real files the tests use, all inside the repository (sources and licences:
``tests/fixtures/README.md``)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES_DIR = REPO / "tests" / "fixtures"
REFERENCE_DIR = (
    FIXTURES_DIR / "videoprism_reference"
)  # golden outputs of the official JAX VideoPrism, tiny random weights
TEST_SPM_MODEL = FIXTURES_DIR / "test_spm.model"  # the official SentencePiece test model
REAL_CLIP = REPO / "apps" / "examples" / "water_bottle_drumming.mp4"  # the official demo clip
