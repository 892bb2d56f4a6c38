"""Shared by the bench scripts: peak memory, machine description, and writing one script's
section of docs/benchmarks.md (between `<!-- bench:NAME -->` markers) without touching the
others."""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the bench script it names; rerun the command to refresh it.\n"


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}, "
        f"Python {sys.version.split()[0]}"
    )


def write_section(name: str, body: str) -> Path:
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS_MD.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS_MD.write_text(text)
    return BENCHMARKS_MD


def replace_between_markers(path: Path, begin: str, end: str, body: str) -> None:
    """Replace what lies between the `begin` and `end` markers of a text file (they stay);
    a file without them is an error, not silently appended to."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{path} has no {begin} ... {end} section")
    section = f"{begin}\n{body}\n{end}"
    path.write_text(pattern.sub(lambda _: section, text), encoding="utf-8")


def interval_cell(entry, digits: int = 3, signed: bool = False) -> str:
    """A report's {"value", "ci95"} entry as "v [low, high]" ("n/a" where it has none)."""
    if entry is None or entry["value"] is None:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{entry['value']:{sign}.{digits}f}"
    low, high = entry.get("ci95") or (None, None)
    if low is not None:
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return text


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
