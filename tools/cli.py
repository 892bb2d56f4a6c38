"""The `gistnet` command: serve, worker, db upgrade, demo, and the client verbs.

    gistnet serve [--host H] [--port P] [--no-worker] [--no-upgrade]
    gistnet worker [--queues prep,train] [--concurrency N]
    gistnet db upgrade [REVISION] | gistnet db current
    gistnet demo [--port P] [--max-steps N]
    gistnet teacher import FILE.gguf --out DIR [--dtype float32|bfloat16]
    gistnet export CHECKPOINT --out DIR [--evaluation REPORT.json]
    gistnet datasets | train | evaluate | jobs | models | gist | score | generate
            | memories ...                                          (tools/client_cli.py)

It only parses arguments, reads the settings and starts things; the work is elsewhere.
This is the one place that composes the API and the workers.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from service.queue import QueueName
from service.settings import Settings, SettingsError, get_settings
from tools.client_cli import CLIENT_COMMANDS, add_client_commands, run_client_command
from tools.processes import start_local_worker, stop_process

DEFAULT_QUEUES = ",".join(QueueName)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gistnet", description="The GistNet platform.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="the API, by default with the database migrated and one local worker for both queues",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-worker", action="store_true", help="API only (workers run elsewhere, as in compose)"
    )
    serve.add_argument(
        "--no-upgrade", action="store_true", help="skip `db upgrade` (a migrate service ran it)"
    )
    serve.add_argument("--log-level", default="info")

    worker = commands.add_parser("worker", help="a Celery worker for the given queues")
    worker.add_argument(
        "--queues", default=DEFAULT_QUEUES, help=f"comma-separated: {', '.join(QueueName)}"
    )
    worker.add_argument(
        "--concurrency", type=int, default=None, help="tasks at once (GISTNET_WORKER_CONCURRENCY)"
    )
    worker.add_argument("--loglevel", default="info")

    db = commands.add_parser("db", help="the database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply the Alembic revisions")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_commands.add_parser("current", help="print the schema revision the database is at")

    demo = commands.add_parser(
        "demo", help="run the sample end to end through the REST API on the embedded stack"
    )
    demo.add_argument("--port", type=int, default=8000, help="a free port is used if it is busy")
    demo.add_argument(
        "--max-steps", type=int, default=None, help="cap the training steps of the run config"
    )

    teacher = commands.add_parser("teacher", help="bring a teacher model to the platform")
    teacher_commands = teacher.add_subparsers(dest="teacher_command", required=True)
    gguf_import = teacher_commands.add_parser(
        "import", help="convert a GGUF file into a Hugging Face teacher folder (dequantized)"
    )
    gguf_import.add_argument("gguf_file", type=Path, help="the .gguf file")
    gguf_import.add_argument(
        "--out", type=Path, required=True, help="the teacher folder to write (must not hold files)"
    )
    gguf_import.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="of the stored weights"
    )
    export = commands.add_parser(
        "export", help="a checkpoint as a Hugging Face style folder with its model card"
    )
    export.add_argument(
        "checkpoint", type=Path, help="gistnet.pt (or a folder) written by training"
    )
    export.add_argument("--out", type=Path, required=True, help="the folder to write")
    export.add_argument(
        "--evaluation", type=Path, default=None, help="an evaluation's report.json for the card"
    )
    add_client_commands(commands)
    return parser


def _export(args: argparse.Namespace) -> int:
    import json

    from gistnet.checkpoint import export_pretrained
    from gistnet.errors import GistNetError

    if args.out.exists():
        print(f"gistnet export: {args.out} exists: name a new folder", file=sys.stderr)
        return 2
    try:
        report = json.loads(args.evaluation.read_text()) if args.evaluation else None
        folder = export_pretrained(args.checkpoint, args.out, evaluation=report)
    except (GistNetError, OSError, ValueError) as err:
        print(f"gistnet export: {err}", file=sys.stderr)
        return 2
    print(f"{folder}: config.json, model.safetensors, run.yaml, README.md")
    return 0


def _teacher(args: argparse.Namespace) -> int:
    from gistnet.errors import GistNetError
    from gistnet.gguf import import_gguf_teacher

    try:
        teacher = import_gguf_teacher(args.gguf_file, args.out, dtype=args.dtype)
    except GistNetError as err:
        print(f"gistnet teacher import: {err}", file=sys.stderr)
        return 2
    print(
        f"{teacher.path}: {teacher.model_type} (GGUF {teacher.architecture}), "
        f"{teacher.parameters:,} parameters in {teacher.dtype}, vocabulary {teacher.vocab_size:,}"
    )
    return 0


def _prepare_folders(settings: Settings, *, strict: bool) -> None:
    """Local roots are created; object stores are checked at start-up. A worker (`strict`)
    refuses to start on a missing bucket or refused credentials, so no job fails on them
    later; the API starts anyway and names the problem in GET /ready."""
    from gistnet.errors import StorageError

    for root, store, write in (
        (settings.artifact_root, settings.artifact_store(), True),
        (settings.data_root, settings.data_store(), False),
    ):
        if isinstance(root, Path):
            root.mkdir(parents=True, exist_ok=True)
            continue
        try:
            store.check(write=write and strict)
        except StorageError as err:
            if strict:
                raise SystemExit(f"gistnet: {err}") from None
            print(f"gistnet: warning: {err} (GET /ready reports it)", file=sys.stderr)


def _db(settings: Settings, args: argparse.Namespace) -> int:
    from service.db.migrate import current_revision, upgrade_database

    if args.db_command == "upgrade":
        upgrade_database(settings.database_url, args.revision)
        print(f"database at revision {current_revision(settings.database_url)}")
    else:
        print(current_revision(settings.database_url) or "(empty: run `gistnet db upgrade`)")
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.celery_app import create_celery_app

    _prepare_folders(settings, strict=True)
    app = create_celery_app(settings)
    queues = ",".join(q.strip() for q in args.queues.split(",") if q.strip())
    unknown = sorted(set(queues.split(",")) - set(QueueName))
    if unknown:
        print(
            f"gistnet worker: unknown queue(s) {', '.join(unknown)}; the queues are "
            f"{', '.join(QueueName)}",
            file=sys.stderr,
        )
        return 2
    argv = [
        "worker",
        f"--queues={queues}",
        f"--concurrency={args.concurrency or settings.worker_concurrency}",
        f"--loglevel={args.loglevel}",
        f"--hostname=gistnet-{os.getpid()}@%h",
        # Cluster chatter we do not use; mingle also slows start-up.
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from api.main import create_app

    _prepare_folders(settings, strict=False)
    if not args.no_upgrade:
        from service.db.migrate import upgrade_database

        upgrade_database(settings.database_url)
    worker = None if args.no_worker else start_local_worker()
    # uvicorn shuts down on SIGTERM and then raises the signal again with the handler that
    # was there before it: make that one leave through `finally`, which stops the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        if worker is not None:
            stop_process(worker)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in CLIENT_COMMANDS:  # HTTP only: the server's settings play no part
        return run_client_command(args)
    if args.command == "teacher":  # local files only, like the client verbs no settings
        return _teacher(args)
    if args.command == "export":
        return _export(args)
    try:
        settings = get_settings()
    except SettingsError as err:
        print(f"gistnet: {err}", file=sys.stderr)
        return 2
    if args.command == "db":
        return _db(settings, args)
    if args.command == "worker":
        return _worker(settings, args)
    if args.command == "serve":
        return _serve(settings, args)
    from tools.demo import run_demo

    return run_demo(settings, port=args.port, max_steps=args.max_steps, repo_root=Path.cwd())


if __name__ == "__main__":
    raise SystemExit(main())
