"""The machinery both trainings share, glue training (``vlm.training``) and encoder pretraining
(``encoder.videoprism.pretrain``): the run harness (``run``: the accelerator, the run directory and its
file names, the resume rule, the shared settings checks and TrainConfigError), the optimisation step
loop (``steps``), atomic pickle-free checkpoints with exact resume (``checkpoints``), the metrics log,
trackers and loss plot (``run_log``), learning-rate schedules (``schedules``) and torch CPU thread
control (``threads``). Config files go through ``encoder.common.configs``, atomic writes through
``encoder.common.atomic_files``."""
