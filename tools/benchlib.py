"""Shared by benchmark scripts: replace one '## Section' of BENCHMARKS.md in place.

Each benchmark owns one section, so scripts can be re-run independently without
clobbering each other's numbers.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every number here was produced by the command shown in its section, on a 2-core, "
    "24 GB machine. Re-run a command to refresh its section.\n"
)


def machine() -> str:
    return f"{platform.machine()}, Python {platform.python_version()}"


def update_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    """Write `body` under '## title', replacing that section if it exists."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
