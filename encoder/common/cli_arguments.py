"""argparse types that check a flag's range when the command line is parsed, so an absurd value
(``--frames 0``, ``--batch-size -3``) is refused with a usage error before any model loads or any
output is written."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers in ``[low, high]`` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


FRAMES = int_range(1, 4096)  # encoder.video.decode.MAX_NUM_FRAMES
FRAME_SIZE = int_range(1, 4096)  # encoder.video.decode.MAX_SIZE
POSITIVE = int_range(1)
NON_NEGATIVE = int_range(0)
NEW_TOKENS = int_range(1, 8192)


class ConfigFlags:
    """Command-line flags generated from a config dataclass, one per field (transformers' ``HfArgumentParser``).

    Each field ``some_name`` becomes ``--some-name`` (and ``--some_name``), typed from its
    annotation (an ``X | None`` field takes an X), with ``metadata["help"]`` and
    ``metadata["choices"]``; a bool is a bare flag (``--no-some-name`` too when it defaults to
    True). ``aliases`` adds spellings (``{"learning_rate": "--lr"}``); ``prefix`` names nested config
    fields apart (``prefix="decoder_"``: ``--decoder-num-layers``). Every default is
    ``argparse.SUPPRESS``, so only the flags given reach the namespace and :meth:`given` can lay them
    over a config file. Use :attr:`parser` as a parent: ``add_parser(..., parents=[flags.parser])``.
    """

    def __init__(
        self,
        config_class: type,
        *,
        exclude: tuple[str, ...] = (),
        aliases: dict[str, str | list[str]] | None = None,
        prefix: str = "",
    ):
        import dataclasses
        import typing

        from transformers import HfArgumentParser

        hints = typing.get_type_hints(config_class)
        aliases = aliases or {}
        unknown = sorted((set(aliases) | set(exclude)) - {f.name for f in dataclasses.fields(config_class)})
        if unknown:
            raise ValueError(f"{config_class.__name__} has no fields {unknown}")
        specs, self.fields = [], {}
        for spec in dataclasses.fields(config_class):
            if spec.name in exclude or not spec.init:
                continue
            annotation = hints[spec.name]
            if spec.default is not dataclasses.MISSING:
                default = spec.default
            elif spec.default_factory is not dataclasses.MISSING:
                default = spec.default_factory()
            else:
                default, annotation = None, annotation | None
            metadata = {key: value for key, value in spec.metadata.items() if key in ("help", "choices", "metavar")}
            shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
            metadata["help"] = (metadata.get("help", "") + shown).strip() or None
            alias = aliases.get(spec.name, [])
            metadata["aliases"] = [alias] if isinstance(alias, str) else list(alias)
            dest = prefix + spec.name
            self.fields[dest] = spec.name
            if spec.default_factory is not dataclasses.MISSING:  # a list: HfArgumentParser takes nargs="+"
                specs.append(
                    (dest, annotation, dataclasses.field(default_factory=spec.default_factory, metadata=metadata))
                )
            else:
                specs.append((dest, annotation, dataclasses.field(default=default, metadata=metadata)))
        flags_class = dataclasses.make_dataclass(f"{config_class.__name__}Flags", specs)
        self.parser = HfArgumentParser(flags_class, add_help=False)
        for action in self.parser._actions:  # after HfArgumentParser set them (they shape the bool flags)
            if action.dest in self.fields:
                action.default = argparse.SUPPRESS
                # usage and help name the dashed spelling first (--output-dir, not --output_dir)
                action.option_strings.sort(key=lambda option: "_" in option)

    def given(self, args: argparse.Namespace) -> dict:
        """The config fields set on the command line: ``{field name: value}``."""
        return {name: getattr(args, dest) for dest, name in self.fields.items() if hasattr(args, dest)}
