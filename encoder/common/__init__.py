"""Machinery every layer shares: JSON-lines files (``jsonl``), atomic files and folders
(``atomic_files``), config dataclasses to and from JSON (``configs``), range-checked command-line flags
(``cli_arguments``) and optional extras with a one-line message when missing (``extras``)."""
