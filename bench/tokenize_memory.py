"""What one long document costs to tokenize: the peak memory and the seconds of the sample
tokenizer on one document of each size, each in a process of its own, its peak over what
the process held before. This is what `sources.max_document_bytes` bounds: preparation
tokenizes a document whole, in chunks of at most 256 documents and
`TOKENIZE_CHUNK_CHARS` characters (or one longer document alone).

    python -m bench.tokenize_memory [--mib 1 4 16]

Writes docs/benchmarks.md (section `tokenize_memory`) and prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.report import machine, table, write_section
from gistnet.bounds import SourceBounds
from gistnet.examples import TOKENIZE_CHUNK_CHARS

# The child's own figures (/proc/self/status): its ru_maxrss would start at its parent's.
_ONE = """
import sys, time
from gistnet.sample.corpus import generate_documents
from gistnet.teacher import load_tokenizer
tokenizer = load_tokenizer(sys.argv[1])
size = int(sys.argv[2])
base = " ".join(generate_documents(200, seed=1))
document = (base * (size // len(base) + 1))[:size]
def status(key):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))
before = status("VmRSS:")
started = time.perf_counter()
ids = tokenizer([document], add_special_tokens=False, verbose=False)["input_ids"][0]
seconds = time.perf_counter() - started
grown = status("VmHWM:") - before
print(len(ids), seconds, grown)
"""


def measure(mib: float, tokenizer: str) -> dict:
    size = int(mib * 2**20)
    done = subprocess.run(
        [sys.executable, "-c", _ONE, tokenizer, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    tokens, seconds, grown = done.stdout.split()
    return {"mib": mib, "tokens": int(tokens), "seconds": float(seconds), "peak_bytes": int(grown)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokenizer", default="samples/teacher")
    args = parser.parse_args(argv)
    rows = [measure(mib, args.tokenizer) for mib in args.mib]
    print(json.dumps(rows, indent=1))
    body = "\n".join(
        [
            "## One long document, tokenized (`bench/tokenize_memory.py`)",
            "",
            f"The sample tokenizer on one document of each size, in a process of its own ({machine()}).",
            "Preparation tokenizes chunks of at most 256 documents and "
            f"{TOKENIZE_CHUNK_CHARS:,} characters, or one longer document alone, so its peak "
            "is about that of the longest document it may meet: the bound "
            "`sources.max_document_bytes` "
            f"(default {SourceBounds().max_document_bytes // 2**20} MiB).",
            "",
            table(
                ["document", "tokens", "seconds", "peak memory over the process's"],
                [
                    [
                        f"{r['mib']:g} MiB",
                        f"{r['tokens']:,}",
                        f"{r['seconds']:.1f}",
                        f"{r['peak_bytes'] / 2**20:,.0f} MiB",
                    ]
                    for r in rows
                ],
            ),
        ]
    )
    write_section("tokenize_memory", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
