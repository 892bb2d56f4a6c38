"""The `gistnet` command's client verbs, on `gistnet.client.Client` (HTTP only):

    gistnet datasets [list] | datasets create CONFIG.yaml [--file SPLIT=PATH] [--wait]
    gistnet datasets show ID
    gistnet train DATASET_ID --config RUN.yaml [--max-steps N] [--wait]
    gistnet evaluate MODEL_ID [--dataset ID] [--max-examples N] [--wait]
    gistnet jobs [ID] [--follow] [--cancel] [--logs [--follow]]
    gistnet models [ID] [--download DIR]
    gistnet gist --text TEXT | --file PATH | --blocks JSON [--model ID] [--output X.npy]
    gistnet score CONTINUATION [CONTEXT PARTS] [--model ID]
    gistnet generate [PROMPT] [CONTEXT PARTS] [--max-new-tokens N] [--temperature T]
                     [--top-p P] [--seed S] [--ignore-eos] [--stream] [--model ID]
    gistnet memories [list] [--model ID] | memories show ID | memories delete ID
    gistnet memories create --text TEXT | --file PATH [--model ID] [--name NAME]

CONTEXT PARTS are read in the order given: --text TEXT and --text-file PATH raw,
--compress TEXT and --compress-file PATH compressed with the model's GistNet, --memory ID
a stored memory.

Each takes --url (GISTNET_URL, default http://127.0.0.1:8000), --api-key (GISTNET_API_KEY)
and --json (print the server's JSON instead of lines for people). The `gistnet` command
adds them with `add_client_commands` and runs them with `run_client_command`;
`python -m tools.client_cli ...` runs them alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gistnet.client import APIError, Client, JobFailed, ServerUnreachable
from gistnet.errors import GistNetError

CLIENT_COMMANDS = (
    "datasets",
    "train",
    "evaluate",
    "jobs",
    "models",
    "gist",
    "score",
    "generate",
    "memories",
)


def _connection(*, nested: bool = False) -> argparse.ArgumentParser:
    """--url, --api-key, --json. `nested` ones (under `datasets`) leave a value unset
    unless given, so they never overwrite what was given before the verb."""
    unset = {"default": argparse.SUPPRESS} if nested else {}
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the API (GISTNET_URL; http://127.0.0.1:8000)", **({"default": None} | unset)
    )
    common.add_argument(
        "--api-key", help="bearer key (GISTNET_API_KEY)", **({"default": None} | unset)
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print the server's JSON",
        **({"default": False} | unset),
    )
    return common


def add_client_commands(subparsers) -> None:
    """Add the client verbs to a `gistnet` parser's subparsers."""
    common = _connection()

    datasets = subparsers.add_parser(
        "datasets", parents=[common], help="list, show or create datasets"
    )
    nested = _connection(nested=True)
    verbs = datasets.add_subparsers(dest="datasets_command")
    listing = verbs.add_parser("list", parents=[nested], help="all datasets (the default)")
    listing.set_defaults(client_handler=_datasets_list)
    show = verbs.add_parser("show", parents=[nested], help="one dataset")
    show.add_argument("dataset_id", type=int)
    show.set_defaults(client_handler=_datasets_show)
    create = verbs.add_parser(
        "create",
        parents=[nested],
        help="prepare a dataset from a config file; its local source files are uploaded",
    )
    create.add_argument("config", type=Path, help="a dataset config (configs/data/*.yaml)")
    create.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="SPLIT=PATH",
        help="upload PATH (.txt / .jsonl) for SPLIT; repeat for more files",
    )
    create.add_argument("--wait", action="store_true", help="follow preparation until it ends")
    create.set_defaults(client_handler=_datasets_create)
    datasets.set_defaults(client_handler=_datasets_list)  # `gistnet datasets` alone lists

    train = subparsers.add_parser("train", parents=[common], help="train GistNet on a dataset")
    train.add_argument("dataset_id", type=int)
    train.add_argument("--config", type=Path, help="a run config (configs/runs/*.yaml)")
    train.add_argument("--split", default="train")
    train.add_argument("--max-steps", type=int, default=None, help="override training.max_steps")
    train.add_argument("--wait", action="store_true", help="follow training until it ends")
    train.set_defaults(client_handler=_train)

    evaluate = subparsers.add_parser(
        "evaluate", parents=[common], help="ΔNLL@H evaluation of a model"
    )
    evaluate.add_argument("model_id", type=int)
    evaluate.add_argument("--dataset", type=int, default=None, help="default: the model's own")
    evaluate.add_argument("--split", default="validation")
    evaluate.add_argument("--max-examples", type=int, default=None)
    evaluate.add_argument(
        "--oracle-examples",
        type=int,
        default=None,
        help="add the oracle (free vectors fitted per example) on this many examples",
    )
    _refine_arguments(evaluate, "add the refined gists as a condition: ")
    evaluate.add_argument(
        "--mode", choices=("blocks", "long"), default="blocks",
        help="long: the tokens after a long context, whole, truncated or compressed",
    )  # fmt: skip
    evaluate.add_argument("--context-tokens", type=int, help="long mode: the context's tokens")
    evaluate.add_argument("--recent-tokens", type=int, help="long mode: latest tokens kept raw")
    evaluate.add_argument("--score-tokens", type=int, help="long mode: tokens scored after it")
    evaluate.add_argument("--bootstrap-samples", type=int, default=1000)
    evaluate.add_argument("--wait", action="store_true", help="follow it and print the report")
    evaluate.set_defaults(client_handler=_evaluate)

    jobs = subparsers.add_parser("jobs", parents=[common], help="list jobs, or show one")
    jobs.add_argument("job_id", type=int, nargs="?")
    jobs.add_argument(
        "--follow", action="store_true", help="live progress from the event stream until it ends"
    )
    jobs.add_argument("--cancel", action="store_true", help="ask the job to stop")
    jobs.add_argument(
        "--logs", action="store_true", help="what the worker logged for it (with --follow: live)"
    )
    jobs.add_argument("--status", default=None)
    jobs.add_argument("--kind", default=None)
    jobs.set_defaults(client_handler=_jobs)

    models = subparsers.add_parser("models", parents=[common], help="list models, or show one")
    models.add_argument("model_id", type=int, nargs="?")
    models.add_argument(
        "--download",
        type=Path,
        default=None,
        metavar="DIR",
        help="with ID: write the model as a folder (safetensors, config, card) under DIR",
    )
    models.set_defaults(client_handler=_models)

    gist = subparsers.add_parser("gist", parents=[common], help="gist vectors of text or blocks")
    source = gist.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="text, cut into full blocks by the model's tokenizer")
    source.add_argument("--file", type=Path, help="a text file")
    source.add_argument("--blocks", help="token ids as JSON: [[id, ...], ...]")
    gist.add_argument("--model", type=int, default=None, help="default: the newest model")
    gist.add_argument("--output", type=Path, default=None, help="save the (N, D) array (.npy)")
    _refine_arguments(gist, "refine each gist from its block (slower): ")
    gist.set_defaults(client_handler=_gist)

    score = subparsers.add_parser(
        "score", parents=[common], help="log-probabilities of a continuation after a context"
    )
    score.add_argument("continuation", help="the text to score after the context")
    _context_arguments(score)
    score.set_defaults(client_handler=_score)

    generate = subparsers.add_parser(
        "generate", parents=[common], help="new text after a context and a prompt"
    )
    generate.add_argument("prompt", nargs="?", default="", help="read raw after the context")
    _context_arguments(generate)
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument(
        "--ignore-eos", action="store_true", help="go on past the end-of-text token"
    )
    generate.add_argument("--stream", action="store_true", help="print tokens as they come")
    generate.set_defaults(client_handler=_generate)

    memories = subparsers.add_parser(
        "memories", parents=[common], help="list, show, create or delete memories"
    )
    memory_verbs = memories.add_subparsers(dest="memories_command")
    listing = memory_verbs.add_parser("list", parents=[nested], help="all memories (the default)")
    listing.set_defaults(client_handler=_memories_list)
    for parser in (memories, listing):
        parser.add_argument("--model", type=int, default=argparse.SUPPRESS, help="of this model")
    show = memory_verbs.add_parser("show", parents=[nested], help="one memory")
    show.add_argument("memory_id", type=int)
    show.set_defaults(client_handler=_memories_show)
    delete = memory_verbs.add_parser("delete", parents=[nested], help="delete a memory")
    delete.add_argument("memory_id", type=int)
    delete.set_defaults(client_handler=_memories_delete)
    create = memory_verbs.add_parser(
        "create", parents=[nested], help="compress a document once, to read in many contexts"
    )
    document = create.add_mutually_exclusive_group(required=True)
    document.add_argument("--text")
    document.add_argument("--file", type=Path, help="a text file")
    create.add_argument("--model", type=int, default=None, help="default: the newest model")
    create.add_argument("--name", default=None)
    create.set_defaults(client_handler=_memories_create)
    memories.set_defaults(client_handler=_memories_list)


class _ContextPart(argparse.Action):
    """Appends (part kind, value) to `context`, so parts keep the order they were given."""

    def __call__(self, parser, namespace, value, option_string=None):
        kind, read = self.const
        parts = list(getattr(namespace, "context", None) or [])
        if read == "file":
            value = Path(value).read_text(encoding="utf-8")
        parts.append({kind: int(value) if kind == "memory_id" else value})
        namespace.context = parts


def _context_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(context=[])
    for option, kind, read, what in (
        ("--text", "text", "value", "a text read raw"),
        ("--text-file", "text", "file", "a text file read raw"),
        ("--compress", "compress", "value", "a text read as its blocks' gists"),
        ("--compress-file", "compress", "file", "a text file read as its blocks' gists"),
        ("--memory", "memory_id", "value", "a stored memory (gistnet memories)"),
    ):
        parser.add_argument(
            option, action=_ContextPart, const=(kind, read), dest="context", help=what
        )
    parser.add_argument("--model", type=int, default=None, help="default: the newest model")


def _refine_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--refine-samples",
        type=int,
        default=None,
        help=what + "this many continuations the teacher samples per block (e.g. 8)",
    )
    parser.add_argument("--refine-steps", type=int, default=50, help="Adam steps per gist")


def _refine(args) -> dict[str, int] | None:
    if args.refine_samples is None:
        return None
    return {"samples": args.refine_samples, "steps": args.refine_steps}


def run_client_command(args: argparse.Namespace) -> int:
    """Run a parsed client verb; errors print the server's message and return 1."""
    try:
        with Client(args.url, api_key=args.api_key) as client:
            return args.client_handler(client, args) or 0
    except (APIError, JobFailed, ServerUnreachable) as err:
        print(f"gistnet: {err}", file=sys.stderr)
        return 1
    except (GistNetError, OSError, ValueError) as err:
        print(f"gistnet: {err}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------- output


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _describe_job(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    parts = [f"{job['kind']} job {job['id']}: {job['status']}", f"attempt {job['attempt']}"]
    if progress.get("max_steps"):
        parts.append(f"step {progress.get('step') or 0}/{progress['max_steps']}")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if job.get("worker"):
        parts.append(f"on {job['worker']}")
    if job.get("error"):
        parts.append(f"error: {job['error']['message']}")
    result = {k: v for k, v in (job.get("result") or {}).items() if v is not None}
    if result and job["status"] == "succeeded":
        parts.append(", ".join(f"{k} {v}" for k, v in result.items()))
    return "; ".join(parts)


def _follow(client: Client, job_id: int, args) -> int:
    job = client.wait(job_id, progress=not args.json, raise_on_failure=False)
    _print_json(job) if args.json else print(_describe_job(job))
    return 0 if job["status"] == "succeeded" else 1


# ---------------------------------------------------------------------- handlers


def _datasets_list(client: Client, args) -> int:
    data = client.datasets()
    if args.json:
        _print_json(data)
        return 0
    rows = []
    for d in data:
        splits = d.get("splits") or {}
        rows.append(
            [
                d["id"],
                d["name"],
                d["status"],
                ",".join(splits),
                sum(s.get("examples") or 0 for s in splits.values()) or None,
                d.get("job_id"),
            ]
        )
    _table(rows, ["ID", "NAME", "STATUS", "SPLITS", "EXAMPLES", "JOB"])
    return 0


def _datasets_show(client: Client, args) -> int:
    _print_json(client.dataset(args.dataset_id))
    return 0


def _datasets_create(client: Client, args) -> int:
    files: dict[str, list[Path]] = {}
    for item in args.file:
        split, sep, path = item.partition("=")
        if not sep or not split or not path:
            raise ValueError(f"--file {item!r}: write it as SPLIT=PATH, e.g. train=notes.txt")
        files.setdefault(split, []).append(Path(path))
    accepted = client.create_dataset(args.config, files=files or None)
    if args.json and not args.wait:
        _print_json(accepted)
        return 0
    print(f"dataset {accepted['dataset_id']} queued: job {accepted['job_id']}", file=sys.stderr)
    if not args.wait:
        print(accepted["dataset_id"])
        return 0
    return _follow(client, accepted["job_id"], args)


def _train(client: Client, args) -> int:
    overrides = {"max_steps": args.max_steps} if args.max_steps is not None else {}
    accepted = client.train(args.dataset_id, args.config, split=args.split, **overrides)
    if not args.wait:
        _print_json(accepted) if args.json else print(accepted["job_id"])
        return 0
    print(f"training queued: job {accepted['job_id']}", file=sys.stderr)
    return _follow(client, accepted["job_id"], args)


def _evaluate(client: Client, args) -> int:
    accepted = client.evaluate(
        args.model_id,
        args.dataset,
        split=args.split,
        max_examples=args.max_examples,
        bootstrap_samples=args.bootstrap_samples,
        oracle_examples=args.oracle_examples,
        refine=_refine(args),
        mode=args.mode,
        context_tokens=args.context_tokens,
        recent_tokens=args.recent_tokens,
        score_tokens=args.score_tokens,
    )
    if not args.wait:
        _print_json(accepted) if args.json else print(accepted["evaluation_id"])
        return 0
    print(
        f"evaluation {accepted['evaluation_id']} queued: job {accepted['job_id']}", file=sys.stderr
    )
    job = client.wait(accepted["job_id"], progress=not args.json, raise_on_failure=False)
    evaluation = client.evaluation(accepted["evaluation_id"])
    if args.json:
        _print_json(evaluation)
    elif evaluation.get("report"):
        _print_report(evaluation["report"])
    else:
        print(_describe_job(job))
    return 0 if job["status"] == "succeeded" else 1


def _print_report(report: dict[str, Any]) -> None:
    rows = []
    for name, entry in report["conditions"].items():
        gr = entry.get("gap_recovered") or entry.get("gap_recovered_long") or {"value": None}
        low, high = gr.get("ci95") or (None, None)
        interval = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        value = gr["value"]
        rows.append(
            [
                name,
                f"{entry['nll']['value']:.4f}",
                f"{entry['delta_nll']['value']:.4f}",
                "" if value is None else f"{value:.3f}",
                interval,
            ]
        )
    if report.get("mode") == "long":
        print(
            f"{report['n_examples']} windows, {report['context_tokens']} context tokens "
            f"({report['compressed_positions']} positions compressed), "
            f"{report['score_tokens']} scored"
        )
        _table(rows, ["CONDITION", "NLL", "ΔNLL", "GR_LONG", "95% CI"])
        return
    print(f"{report['n_examples']} examples, {report['horizon_tokens']} horizon tokens")
    _table(rows, ["CONDITION", "NLL", "ΔNLL", "GAP RECOVERED", "95% CI"])


def _jobs(client: Client, args) -> int:
    if args.job_id is None:
        data = client.jobs(status=args.status, kind=args.kind)
        if args.json:
            _print_json(data)
            return 0
        rows = []
        for job in data:
            progress = job.get("progress") or {}
            step = progress.get("step")
            total = progress.get("max_steps")
            rows.append(
                [
                    job["id"],
                    job["kind"],
                    job["status"],
                    f"{step or 0}/{total}" if total else "",
                    job["attempt"],
                    job.get("worker"),
                    (job.get("error") or {}).get("message"),
                ]
            )
        _table(rows, ["ID", "KIND", "STATUS", "PROGRESS", "ATTEMPT", "WORKER", "ERROR"])
        return 0
    if args.cancel:
        job = client.cancel(args.job_id)
        _print_json(job) if args.json else print(_describe_job(job))
        return 0
    if args.logs:
        lines = client.follow_logs(args.job_id) if args.follow else client.job_logs(args.job_id)
        for line in lines:
            print(f"{line['logged_at']} {line['level']:<7} {line['message']}", flush=True)
        return 0
    if args.follow:
        return _follow(client, args.job_id, args)
    job = client.job(args.job_id)
    _print_json(job) if args.json else print(_describe_job(job))
    return 0


def _models(client: Client, args) -> int:
    if args.download is not None:
        if args.model_id is None:
            print(
                "gistnet models --download: name the model (gistnet models ID --download DIR)",
                file=sys.stderr,
            )
            return 2
        print(client.download_model(args.model_id, args.download))
        return 0
    if args.model_id is not None:
        _print_json(client.model(args.model_id))
        return 0
    data = client.models()
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [m["id"], m["dataset_id"], m["steps"], m.get("final_loss"), m.get("val_loss"), m["job_id"]]
        for m in data
    ]
    _table(rows, ["ID", "DATASET", "STEPS", "FINAL LOSS", "VAL LOSS", "JOB"])
    return 0


def _gist(client: Client, args) -> int:
    if args.blocks is not None:
        source: Any = json.loads(args.blocks)
    elif args.file is not None:
        source = args.file.read_text(encoding="utf-8")
    else:
        source = args.text
    gists = client.gist(source, model_id=args.model, refine=_refine(args))
    if args.output is not None:
        np.save(args.output, gists)
    if args.json:
        _print_json(gists.tolist())
        return 0
    if gists.ndim == 3:  # k gists per block: show each block's first vector
        print(f"{gists.shape[0]} blocks of {gists.shape[1]} gists each")
        gists = gists[:, 0]
    norms = np.linalg.norm(gists, axis=1)
    print(f"{gists.shape[0]} gists of dimension {gists.shape[1]}")
    for i, (row, norm) in enumerate(zip(gists, norms, strict=True)):
        head = ", ".join(f"{v:.4f}" for v in row[:4])
        print(f"  [{i}] norm {norm:.4f}  [{head}, ...]")
    if args.output is not None:
        print(f"saved to {args.output}")
    return 0


def _lengths(answer: dict[str, Any]) -> str:
    return (
        f"context {answer['context_length']} positions for {answer['uncompressed_length']} "
        f"tokens ({answer['compressed_blocks']} blocks compressed)"
    )


def _score(client: Client, args) -> int:
    answer = client.score(args.continuation, context=args.context, model_id=args.model)
    if args.json:
        _print_json(answer)
        return 0
    print(
        f"{len(answer['tokens'])} tokens: sum log-prob {answer['sum_logprob']:.4f}, "
        f"mean NLL {answer['mean_nll']:.4f}; {_lengths(answer)}"
    )
    return 0


def _generate(client: Client, args) -> int:
    options = {
        "context": args.context,
        "model_id": args.model,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "ignore_eos": args.ignore_eos,
    }
    if not args.stream:
        answer = client.generate(args.prompt, **options)
        _print_json(answer) if args.json else print(answer["text"])
        if not args.json:
            print(f"({answer['finish_reason']}; {_lengths(answer)})", file=sys.stderr)
        return 0
    for event, data in client.stream_generate(args.prompt, **options):
        if args.json:
            print(json.dumps({"event": event, "data": data}))
        elif event == "token":
            print(data["text"] or "", end="", flush=True)
        elif event == "done":
            print()
            print(f"({data['finish_reason']}; {_lengths(data)})", file=sys.stderr)
    return 0


def _memories_list(client: Client, args) -> int:
    data = client.memories(model_id=getattr(args, "model", None))
    if args.json:
        _print_json(data)
        return 0
    rows = [
        [m["id"], m["model_id"], m["name"], m["tokens"], m["blocks"], m["context_length"]]
        for m in data
    ]
    _table(rows, ["ID", "MODEL", "NAME", "TOKENS", "BLOCKS", "POSITIONS"])
    return 0


def _memories_show(client: Client, args) -> int:
    _print_json(client.memory(args.memory_id))
    return 0


def _memories_delete(client: Client, args) -> int:
    client.delete_memory(args.memory_id)
    print(f"memory {args.memory_id} deleted", file=sys.stderr)
    return 0


def _memories_create(client: Client, args) -> int:
    document = args.text if args.file is None else args.file.read_text(encoding="utf-8")
    memory = client.create_memory(document, model_id=args.model, name=args.name)
    _print_json(memory) if args.json else print(memory["id"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gistnet", description="The GistNet service's client.")
    add_client_commands(parser.add_subparsers(dest="command", required=True))
    return run_client_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
