"""Two CPU processes of a ``prism-vlm`` command under ``accelerate launch`` (torchrun with gloo: accelerate's
``--cpu`` launcher needs MPI for more than one process)."""

from __future__ import annotations

import sys

from tests.helpers.app_server import free_port


def two_process_command(*prism_vlm_arguments: str) -> list[str]:
    """The argv of ``accelerate launch --multi_gpu --num_processes 2 -m vlm.cli.main ARGUMENTS`` on a free port."""
    return [
        *[sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"],
        *["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
        *["--main_process_port", str(free_port()), "-m", "vlm.cli.main", *prism_vlm_arguments],
    ]
