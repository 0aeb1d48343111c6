"""The ``prism-vlm`` command line (``main``), one module per family of subcommands, each a few lines over
one library function; the app's own command lives with the app (``apps.cli``)."""
