"""The prism-vlm test suite: one folder per package (encoder/, vlm/, apps/, scripts/), shared fixtures in
conftest.py, helpers in helpers/, small real files in fixtures/."""
