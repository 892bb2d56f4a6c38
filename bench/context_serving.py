"""POST /score, POST /generate and POST /memories: a long document read full against read
compressed, through the real server and in the library alone.

    python -m bench.context_serving [--context-tokens 448] [--recent 64] [--repeats 5]

It builds a small checkpoint on the sample teacher (or takes --checkpoint), records it in a
scratch SQLite database and starts `gistnet serve --no-worker`. For a document of C tokens
and a question after it, the context is read three ways: `full` (the C tokens raw),
`memory` (a stored memory: the oldest C - R tokens' blocks as gists, the tail and the last R
tokens raw, compressed once by POST /memories) and `truncated` (the last B tokens raw, B the
memory's positions). Measured: the cost of compressing the document (POST /memories), the
latency of POST /score and of POST /generate (the time to the first streamed token, and
tokens/s after it from whole answers), and, in the library with no HTTP, the prefill
time and the KV cache's bytes of each. Target (issue: C = 1,024, R = 64, 32:1): prefill on
a memory at least 8x faster than on the full text; the sample teacher reads 512 positions,
so C defaults to 448 (a teacher of 1,024 positions, `make_sample_teacher --positions
1024`, takes C = 960, leaving room for the question and the new tokens). Results go to
docs/benchmarks.md between the `bench:context_serving` markers (--section names another,
one per teacher).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.gist_load import SAMPLE_TEACHER, served_model, start_server, wait_healthy
from bench.report import machine, table, write_section

ROOT = Path(__file__).resolve().parents[1]
TARGET = 8.0


def _median_ms(timed, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        timed()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _first_token_ms(http: httpx.Client, body: dict) -> float:
    """Milliseconds to the first streamed token (the prefill and one step, over HTTP)."""
    from gistnet.client import parse_events

    started = time.perf_counter()
    with http.stream("POST", "/generate", json={**body, "stream": True}) as answer:
        for event, _ in parse_events(answer.iter_lines()):
            if event == "token":
                return 1000 * (time.perf_counter() - started)
    raise RuntimeError("the stream sent no token")


def _tokens_per_s(http: httpx.Client, body: dict, repeats: int) -> float:
    """Tokens per second after the first: whole answers of N tokens and of 1, so neither
    the prefill nor how the stream's bytes are buffered counts."""
    n = body["max_new_tokens"]
    many = _median_ms(lambda: http.post("/generate", json=body).raise_for_status(), repeats)
    one = {**body, "max_new_tokens": 1}
    once = _median_ms(lambda: http.post("/generate", json=one).raise_for_status(), repeats)
    return (n - 1) / max(many - once, 1e-6) * 1000


def library_prefill(engine, parts: dict[str, list], repeats: int) -> dict[str, dict]:
    """Prefill milliseconds and KV-cache bytes of each context, the engine alone."""
    from gistnet.continuation import Sampling

    out = {}
    for name, context in parts.items():

        def prefill(context=context):
            return engine.generation(context, Sampling())

        prefill()  # warm-up
        generation = prefill()
        out[name] = {
            "prefill_ms": _median_ms(prefill, repeats),
            "kv_bytes": generation.cache_bytes(),
            "positions": generation.context_length,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context-tokens", type=int, default=448, help="C")
    parser.add_argument("--recent", type=int, default=64, help="R: the last tokens kept raw")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, help="default: train a small one")
    parser.add_argument("--teacher", type=Path, default=SAMPLE_TEACHER, help="for that one")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch the docs")
    parser.add_argument(
        "--section",
        default="context_serving",
        help="the docs/benchmarks.md section written (bench:NAME markers): one per teacher",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from gistnet.sample.corpus import generate_documents
    from gistnet.teacher import load_tokenizer
    from tools.processes import free_port, stop_process

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        checkpoint, artifacts, database_url, model_id = served_model(
            workdir, args.checkpoint, args.teacher
        )
        from gistnet.checkpoint import read_checkpoint_info

        info = read_checkpoint_info(checkpoint)
        tokenizer = load_tokenizer(info.get("tokenizer") or info["teacher"]["model"])
        ids: list[int] = []
        for document in generate_documents(40, seed=3):
            ids += tokenizer(document, add_special_tokens=False)["input_ids"]
        C, R = args.context_tokens, args.recent
        document, question = ids[:C], ids[C : C + 8]
        old, recent = document[: C - R], document[C - R :]

        port = free_port(8000)
        server = start_server(
            workdir,
            database_url=database_url,
            artifacts=artifacts,
            port=port,
            threads=args.threads,
        )
        rows = {}
        try:
            wait_healthy(port, server)
            http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
            create = {"model_id": model_id, "tokens": old}
            http.post("/memories", json=create).raise_for_status()  # loads the model
            memory_ms = _median_ms(
                lambda: http.post("/memories", json=create).raise_for_status(), args.repeats
            )
            memory = http.post("/memories", json=create).json()
            budget = memory["context_length"] + R
            contexts = {
                "full": [{"tokens": document}],
                "memory": [{"memory_id": memory["id"]}, {"tokens": recent}],
                "truncated": [{"tokens": document, "keep_last": budget}],
            }
            for name, context in contexts.items():
                score = {"model_id": model_id, "context": context, "continuation": question}
                generate = {
                    "model_id": model_id,
                    "context": context,
                    "prompt": question,
                    "max_new_tokens": args.new_tokens,
                    "ignore_eos": True,
                }
                answer = http.post("/score", json=score).json()
                score_ms = _median_ms(
                    lambda score=score: http.post("/score", json=score).raise_for_status(),
                    args.repeats,
                )
                firsts = [_first_token_ms(http, generate) for _ in range(args.repeats)]
                rows[name] = {
                    "positions": answer["context_length"],
                    "score_ms": score_ms,
                    "first_ms": statistics.median(firsts),
                    "tokens_per_s": _tokens_per_s(http, generate, args.repeats),
                    "nll": answer["mean_nll"],
                }
                print(name, rows[name], flush=True)
        finally:
            stop_process(server)

        import numpy as np

        from api.engine import ContextPart, GistEngine

        engine = GistEngine(model_id=0, checkpoint=checkpoint, device="cpu", max_batch=64)
        blocks = engine.block_size
        full_blocks = len(old) // blocks
        # What the memory stores: the gists of the old part's full blocks, (m, k, D).
        gists = engine.encode(np.asarray(old[: full_blocks * blocks]).reshape(full_blocks, blocks))
        gists = gists.reshape(full_blocks, engine.gists_per_block, engine.dim)
        library = library_prefill(
            engine,
            {
                "full": [ContextPart(tokens=np.asarray(document))],
                "memory": [
                    ContextPart(tokens=np.asarray(old), gists=gists),
                    ContextPart(tokens=np.asarray(recent)),
                ],
                "truncated": [ContextPart(tokens=np.asarray(document[-budget:]))],
            },
            args.repeats,
        )
        print(library, flush=True)

    teacher_dir = Path(info["teacher"]["model"])
    shipped = teacher_dir.resolve() == SAMPLE_TEACHER.resolve()
    # A teacher make_sample_teacher wrote (its README says so) is named by how it was made,
    # any other by its folder: the folder is the user's own.
    made_here = (teacher_dir / "README.md").is_file() and (
        (teacher_dir / "README.md").read_text().startswith("# Sample teacher")
    )
    positions = engine.position_limit
    if shipped:
        teacher_name, command_tail = "the sample teacher", ""
    elif made_here:
        teacher_name = f"a {positions}-position sample teacher"
        command_tail = (
            f" --teacher DIR --section {args.section}` (DIR: `python -m "
            f"tools.make_sample_teacher --long-documents --positions {positions} "
            f"--seq-len {positions} --out DIR`)"
        )
    else:
        teacher_name = f"{teacher_dir.name}, {positions} positions"
        command_tail = f" --teacher {teacher_dir.name} --section {args.section}`"
    from gistnet.teacher import layer_count, load_teacher_config

    size = f"{layer_count(load_teacher_config(str(teacher_dir)))} layers of width {engine.dim}"
    speedup = library["full"]["prefill_ms"] / library["memory"]["prefill_ms"]
    verdict = "met" if speedup >= TARGET else "NOT met"
    print(f"prefill on the memory: {speedup:.1f}x faster than the full text ({verdict})")
    if args.no_write:
        return 0
    body = [
        f"## Long contexts: `/score`, `/generate`, `/memories` ({teacher_name})",
        "",
        f"`python -m bench.context_serving --context-tokens {C} --recent {R}"
        f"{command_tail or '`'} on {machine()}: a document of C = {C} tokens of the sample "
        f"stories and an 8-token question after it, on a model of {blocks}-token blocks; "
        f"`memory` reads the oldest {C - R} tokens as a stored memory and the last {R} raw, "
        f"`truncated` the last "
        f"B = {budget} tokens raw (the memory's positions). Medians of {args.repeats}, the "
        f"machine's load average {load_before:.1f} before the run (the figures are as noisy "
        f"as the machine is shared). Compressing the document once (`POST /memories`, "
        f"{full_blocks} blocks): {memory_ms:.1f} ms.",
        "",
        table(
            [
                "context",
                "positions read",
                "prefill (library)",
                "KV cache",
                "`/score`",
                "`/generate` first token",
                "then tokens/s",
                "NLL of the question",
            ],
            [
                [
                    name,
                    rows[name]["positions"],
                    f"{library[name]['prefill_ms']:.1f} ms",
                    f"{library[name]['kv_bytes'] / 1024:.0f} KiB",
                    f"{rows[name]['score_ms']:.1f} ms",
                    f"{rows[name]['first_ms']:.1f} ms",
                    f"{rows[name]['tokens_per_s']:.0f}",
                    f"{rows[name]['nll']:.3f}",
                ]
                for name in ("full", "memory", "truncated")
            ],
        ),
        "",
        f"Prefill on the memory is {speedup:.1f}x faster than on the full text (target at "
        f"C = 1,024, R = 64, 32:1: 8x; {verdict} here, at C = {C} and "
        f"{(C - R) / max(full_blocks, 1):.0f}:1 for the compressed part). The teacher has "
        f"{size}: the smaller it is, the more a fixed cost per forward weighs on every "
        f"figure; the KV cache scales with the positions read, and a token after the prefill costs "
        f"about the same whatever the context (the rows' tokens/s differ by the machine's "
        f"noise). The NLLs are those of a GistNet trained for a few steps: figures of "
        f"speed, not of quality (docs/quality.md has those).",
    ]
    write_section(args.section, "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
