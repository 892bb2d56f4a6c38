"""`gistnet demo`: the sample, end to end, through the REST API of the embedded stack.

It starts `gistnet serve` (database migrated, one local worker for both queues, the API),
then, as any client would: POST /datasets with the sample corpus, waits for the job,
POST /train with configs/runs/gistnet_demo.yaml (the substitution objective, shortened),
waits, POST /evaluations on the validation split, waits, POST /gist; prints the job states,
the gap recovered by the gist and by the mean-of-embeddings baseline with their intervals,
where the plot was written, and stops everything it started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from service.queue import TERMINAL, JobStatus
from service.settings import Settings
from tools.processes import free_port, stop_process

DATA_CONFIG = "configs/data/sample_text.yaml"
RUN_CONFIG = "configs/runs/gistnet_demo.yaml"
# A seeded subset of the validation split keeps the evaluation to well under a minute.
EVAL_EXAMPLES = 512
DEMO_TEXT_FOLDER = "gistnet-demo"  # under the data root: the corpus copied for the demo
PRINT_EVERY_S = 10


def dataset_request(repo_root: Path, settings: Settings) -> dict[str, Any]:
    """configs/data/sample_text.yaml as a request: the corpus copied under the data root and
    read through `source`; model folders relative to where the server runs."""
    config_path = repo_root / DATA_CONFIG
    config = yaml.safe_load(config_path.read_text())
    base = config_path.parent
    for key in ("tokenizer", "teacher_model"):
        local = (base / config[key]).resolve()
        if local.is_dir():
            config[key] = os.path.relpath(local, repo_root)
    data = settings.data_store()
    for split in config["splits"].values():
        split.pop("output_path", None)
        if split.get("source"):
            source = (base / split["source"]).resolve()
            data.publish(source, f"{DEMO_TEXT_FOLDER}/{source.name}")
            split["source"] = f"{DEMO_TEXT_FOLDER}/{source.name}"
    config["teacher_device"] = "auto"
    return config


def _wait_for_job(client: httpx.Client, job_id: int, what: str, timeout: float) -> dict[str, Any]:
    """Poll GET /jobs/{id}; print on a change of status and every PRINT_EVERY_S between."""
    started = time.monotonic()
    last_status, last_print = None, 0.0
    while time.monotonic() - started < timeout:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        now = time.monotonic()
        if job["status"] != last_status or now - last_print >= PRINT_EVERY_S:
            print(f"  [{now - started:4.0f}s] {what} job {job_id}: {_describe(job)}", flush=True)
            last_status, last_print = job["status"], now
        if job["status"] in TERMINAL:
            return job
        time.sleep(1.0)
    raise TimeoutError(f"{what} job {job_id} did not finish within {timeout:.0f}s")


def _describe(job: dict[str, Any]) -> str:
    progress, text = job["progress"], job["status"]
    if job["kind"] == "train" and progress.get("step") is not None:
        text += f", step {progress['step']}/{progress['max_steps']}, loss {progress['loss']:.4f}"
    elif job["kind"] == "prepare" and progress.get("detail"):
        detail = progress["detail"]
        text += f", split {detail.get('split')}: {detail.get('examples')} examples"
    return text


def _interval(entry: dict[str, Any]) -> str:
    text = f"{entry['value']:.3f}"
    if entry.get("ci95"):
        low, high = entry["ci95"]
        text += f" [{low:.3f}, {high:.3f}] 95% CI"
    return text


def _gap_lines(report: dict[str, Any], settings: Settings, url: str) -> dict[str, str]:
    """What a gist is worth: the share of the gap between no block (drop) and the whole
    block (full) that the gist closes, beside the mean of the block's embeddings."""
    conditions = report["conditions"]
    drop = conditions["drop"]["delta_nll"]["value"]
    lines = {
        "ΔNLL without the block (drop)": f"{drop:+.3f} nats/token",
        "gap recovered by the gist": _interval(conditions["gist"]["gap_recovered"]),
        "gap recovered by the mean of embeddings": _interval(conditions["mean"]["gap_recovered"]),
    }
    plot = (report.get("files") or {}).get("plot")
    if plot:
        lines["per-position NLL plot"] = f"{settings.artifact_store().location(plot)} (also GET {url}/plot)"
    return lines


def _wait_for_api(client: httpx.Client, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the API did not come up")


def run_demo(settings: Settings, *, port: int, max_steps: int | None, repo_root: Path) -> int:
    if not (repo_root / "samples" / "teacher").is_dir():
        print(
            "gistnet demo: samples/teacher is missing; run it from the repository root "
            "(make the sample with `python -m tools.make_sample_teacher`)",
            file=sys.stderr,
        )
        return 2
    port = free_port(port)
    log_dir = Path("var")
    log_dir.mkdir(exist_ok=True)
    log_path = log_dir / "demo.log"
    headers = {}
    if settings.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
    print(f"starting the embedded stack on http://127.0.0.1:{port} (logs: {log_path})")
    started = time.monotonic()
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120
        ) as client:
            _wait_for_api(client, server)
            states = _demo_flow(client, repo_root, settings, max_steps)
    except Exception as err:
        print(f"gistnet demo failed: {err}\n--- last lines of {log_path} ---", file=sys.stderr)
        print("\n".join(log_path.read_text().splitlines()[-30:]), file=sys.stderr)
        return 1
    finally:
        stop_process(server, timeout=60)
    print("\nsummary")
    for name, value in states.items():
        print(f"  {name}: {value}")
    print(f"  wall time: {time.monotonic() - started:.0f}s; everything started has stopped")
    return 0 if states["train job"] == JobStatus.SUCCEEDED else 1


def _demo_flow(
    client: httpx.Client, repo_root: Path, settings: Settings, max_steps: int | None
) -> dict[str, Any]:
    states: dict[str, Any] = {}
    print("POST /datasets (the sample corpus)")
    accepted = client.post("/datasets", json=dataset_request(repo_root, settings))
    if accepted.status_code != 202:
        raise RuntimeError(f"POST /datasets answered {accepted.status_code}: {accepted.text}")
    accepted = accepted.json()
    job = _wait_for_job(client, accepted["job_id"], "prepare", timeout=1800)
    states["prepare job"] = job["status"]
    if job["status"] != JobStatus.SUCCEEDED:
        raise RuntimeError(f"dataset preparation {job['status']}: {job['error']}")
    dataset = client.get(f"/datasets/{accepted['dataset_id']}").raise_for_status().json()
    examples = {name: s["examples"] for name, s in dataset["splits"].items()}
    print(
        f"  dataset {dataset['id']} ready: {examples} examples, width {dataset['teacher_hidden_size']}"
    )

    run = yaml.safe_load((repo_root / RUN_CONFIG).read_text())
    if max_steps is not None:
        run["training"]["max_steps"] = max_steps
    print(f"POST /train ({RUN_CONFIG}, {run['training']['max_steps']} steps)")
    body = {"dataset_id": dataset["id"], "split": "train", **run}
    accepted = client.post("/train", json=body)
    if accepted.status_code != 202:
        raise RuntimeError(f"POST /train answered {accepted.status_code}: {accepted.text}")
    job = _wait_for_job(client, accepted.json()["job_id"], "train", timeout=3600)
    states["train job"] = job["status"]
    if job["status"] != JobStatus.SUCCEEDED:
        raise RuntimeError(f"training {job['status']}: {job['error']}")
    model = client.get(f"/models/{job['result']['model_id']}").raise_for_status().json()
    states["final loss"] = f"{model['final_loss']:.4f}"
    if model["val_loss"] is not None:
        states["validation loss"] = f"{model['val_loss']:.4f}"

    print(f"POST /evaluations (validation split, {EVAL_EXAMPLES} examples)")
    accepted = client.post(
        "/evaluations",
        json={
            "model_id": model["id"],
            "dataset_id": dataset["id"],
            "split": "validation",
            "max_examples": EVAL_EXAMPLES,
        },
    )
    if accepted.status_code != 202:
        raise RuntimeError(f"POST /evaluations answered {accepted.status_code}: {accepted.text}")
    accepted = accepted.json()
    job = _wait_for_job(client, accepted["job_id"], "evaluate", timeout=1800)
    states["evaluate job"] = job["status"]
    if job["status"] != JobStatus.SUCCEEDED:
        raise RuntimeError(f"evaluation {job['status']}: {job['error']}")
    report = client.get(accepted["evaluation_url"]).raise_for_status().json()["report"]
    states.update(_gap_lines(report, settings, accepted["evaluation_url"]))

    text = "Once upon a time " * 40
    validation = repo_root / "samples" / "sample_text" / "validation.jsonl"
    if validation.is_file():
        import json

        text = json.loads(validation.read_text().splitlines()[0])["text"]
    print("POST /gist (the first validation story)")
    gists = client.post("/gist", json={"model_id": model["id"], "text": text})
    gists = gists.raise_for_status().json()
    states["gists"] = (
        f"{len(gists['gists'])} blocks of {gists['block_size']} tokens -> vectors of "
        f"dim {gists['dim']} ({gists['unused_tokens']} tail tokens unused)"
    )
    states["gist dim"] = gists["dim"]
    return states
