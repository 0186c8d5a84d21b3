"""Click options shared by several commands, defined once so their help stays the same."""

from __future__ import annotations

import click

input_shape_option = click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="NAME:D0,D1,...",
    help="Concrete shape for an input with dynamic dims (repeatable).",
)
