"""Dataset preparation: the project's streaming path against a plain baseline, side by side.

    python -m bench.prep [--docs N] [--device cpu]

Baseline (written here, the obvious first version): per batch of windows, a full-window
forward of the causal-LM class with `output_hidden_states=True`, rows built as Python
lists, every row kept until the end, then one table written. The project: the block
tokens only, through the base model, streamed as record batches.

Each path runs in its own subprocess so its peak RSS is its own. Both run on the sample
teacher and on a wider randomly initialised GPT-2 (256 wide, 4 layers) with the sample's
tokenizer. Results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_TEACHER = ROOT / "samples" / "teacher"
CORPUS = ROOT / "samples" / "sample_text" / "train.jsonl"


def _documents(limit: int) -> list[str]:
    with CORPUS.open() as fh:
        return [json.loads(line)["text"] for _, line in zip(range(limit), fh, strict=False)]


def run_project(teacher: str, docs: int, device: str, out: Path) -> dict:
    from gistnet.config import validate_dataset_config
    from gistnet.data import prepare_dataset

    config = validate_dataset_config(
        {
            "dataset_name": "bench",
            "tokenizer": str(SAMPLE_TEACHER),
            "teacher_model": teacher,
            "teacher_batch_size": 256,
            "teacher_device": device,
            "splits": {"train": {"documents": _documents(docs)}},
        }
    )
    start = time.perf_counter()
    meta = prepare_dataset(config, output_dir=out)
    seconds = time.perf_counter() - start
    split = meta["splits"]["train"]
    return {"tokens": split["tokens"], "examples": split["examples"], "seconds": seconds}


def run_baseline(teacher: str, docs: int, device: str, out: Path) -> dict:
    import pyarrow as pa
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SAMPLE_TEACHER)
    model = AutoModelForCausalLM.from_pretrained(teacher).to(device).eval()
    block, horizon, batch = 32, 64, 256
    start = time.perf_counter()
    windows, tokens = [], 0
    for text in _documents(docs):
        ids = tokenizer(text)["input_ids"]
        tokens += len(ids)
        n_blocks = len(ids) // block
        for b in range(n_blocks - horizon // block + 1):
            windows.append(ids[b * block : b * block + horizon])
    rows = []
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            ctx = windows[i : i + batch]
            out_ = model(input_ids=torch.tensor(ctx, device=device), output_hidden_states=True)
            states = out_.hidden_states[-1][:, :block].float().cpu()
            for c, s in zip(ctx, states, strict=True):
                hidden = s.tolist()
                rows.append(
                    {
                        "input_ids": c[:block],
                        "attention_mask": [1] * block,
                        "context_input_ids": c,
                        "context_attention_mask": [1] * horizon,
                        "teacher_hidden": hidden,
                        "gist_target": [sum(col) / block for col in zip(*hidden, strict=True)],
                    }
                )
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_file(str(out / "train.arrow"), table.schema) as writer:
        writer.write_table(table)
    return {"tokens": tokens, "examples": len(rows), "seconds": time.perf_counter() - start}


def make_wide_teacher(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(SAMPLE_TEACHER)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tok),
        n_embd=256,
        n_layer=4,
        n_head=4,
        n_positions=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


def child(args) -> None:
    from bench.report import peak_rss_mib

    with tempfile.TemporaryDirectory() as tmp:
        fn = run_project if args.path == "project" else run_baseline
        result = fn(args.teacher, args.docs, args.device, Path(tmp))
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


def measure(path: str, teacher: str, docs: int, device: str) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "bench.prep",
        "--child",
        path,
        "--teacher",
        teacher,
        "--docs",
        str(docs),
        "--device",
        device,
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000, help="sample train documents to prepare")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--child", dest="path", choices=["project", "baseline"], help=argparse.SUPPRESS
    )
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:
        return child(args)

    from bench.report import machine, table, write_section

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        teachers = {
            "sample teacher (128 wide, from samples/teacher)": str(SAMPLE_TEACHER),
            "random GPT-2, 256 wide, 4 layers": make_wide_teacher(Path(tmp) / "wide"),
        }
        for label, teacher in teachers.items():
            base = measure("baseline", teacher, args.docs, args.device)
            proj = measure("project", teacher, args.docs, args.device)
            assert base["examples"] == proj["examples"], (base, proj)
            for name, r in (("baseline", base), ("project", proj)):
                print(f"{label} / {name}: {r}", flush=True)
            speedup = (proj["tokens"] / proj["seconds"]) / (base["tokens"] / base["seconds"])
            memory = proj["peak_rss_mib"] / base["peak_rss_mib"]
            for name, r in (("baseline", base), ("project", proj)):
                rows.append(
                    [
                        label,
                        name,
                        f"{r['tokens']:,}",
                        f"{r['examples']:,}",
                        f"{r['tokens'] / r['seconds']:,.0f}",
                        f"{r['examples'] / r['seconds']:,.0f}",
                        f"{r['peak_rss_mib']:,.0f}",
                        f"**{speedup:.1f}x**" if name == "project" else "1.0x",
                        f"**{memory:.2f}**" if name == "project" else "1.00",
                    ]
                )
    on_gpu = args.device != "cpu"
    body = (
        f"## Dataset preparation{' on the GPU' if on_gpu else ''} (`bench/prep.py`)\n\n"
        f"Command: `python -m bench.prep --docs {args.docs} --device {args.device}`  \n"
        f"Machine: {machine()}  \n"
        "Targets: throughput at least 3x the baseline's, peak memory at most a third of it.\n\n"
        + table(
            [
                "teacher",
                "path",
                "tokens",
                "examples",
                "tokens/s",
                "examples/s",
                "peak RSS MiB",
                "throughput vs baseline",
                "memory vs baseline",
            ],
            rows,
        )
    )
    # CPU and GPU figures keep sections of their own
    print(f"wrote {write_section('prep-gpu' if on_gpu else 'prep', body)}")


if __name__ == "__main__":
    main()
