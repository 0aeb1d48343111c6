"""The demo-model pipeline (``scripts/train_demo.py``): train the shipped demo model end to end on the
synthetic moving-shapes corpus, and measure it.

Modules: ``profiles`` (DemoProfile, PROFILES, STAGES, ABLATIONS and a run's saved profile), ``stages``
(corpus, pretraining, features, probes, glue, export), ``evaluation`` (the assistant and its blind and
single-frame baselines, the targets), ``report`` (tables, plots, Markdown from ``templates/``),
``pipeline`` (the stages in order, with per-stage timings) and ``workdir`` (a run's WORK folder).
"""
