"""The dashboard in a real browser: Playwright drives Debian's Chromium through the whole
flow on a running `gistnet serve`: the API key, an upload, preparation, training with the
loss curve growing live, a cancel, an evaluation, and "try it" (gists, and a long text read
full, truncated and compressed). Screenshots go to
var/test-artifacts/dashboard/ (GISTNET_TEST_ARTIFACTS moves it).

Without Playwright or a Chromium the test skips, saying why; under CI (CI=true or
GISTNET_REQUIRE_SERVICES=1) it fails instead. .ci/run installs Chromium where missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVICE_KEY
from tests.service_stack import REPO, sample_teacher, tiny_documents

pytestmark = [pytest.mark.slow]

ARTIFACTS = Path(os.environ.get("GISTNET_TEST_ARTIFACTS", REPO / "var" / "test-artifacts"))
# Long enough (a second or two on two cores) for the page to draw the curve several times.
TRAIN_STEPS = 150
VALIDATE_EVERY = 50


@pytest.fixture
def shots():
    folder = ARTIFACTS / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"dashboard screenshots in {folder}")

    def shot(page, name: str) -> None:
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True)

    return shot


def _corpus(tmp_path: Path) -> tuple[Path, list[Path]]:
    """Train stories as one .jsonl file; two held-out stories as .txt files (a .txt file is
    one document, and the evaluation's `swapped` condition needs two)."""
    documents = tiny_documents(12)
    train = tmp_path / "stories.jsonl"
    train.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents[:-2]))
    validation = [tmp_path / "held_out_1.txt", tmp_path / "held_out_2.txt"]
    for path, document in zip(validation, documents[-2:], strict=True):
        path.write_text(document)
    return train, validation


def _wait_text(page, selector: str, text: str, timeout_s: float = 120) -> None:
    page.locator(selector, has_text=text).first.wait_for(timeout=timeout_s * 1000)


def test_dashboard_drives_upload_training_live_curve_evaluation_and_try_it(
    browser, running_service, tmp_path, shots
):
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    try:
        _drive_the_dashboard(page, running_service, tmp_path, shots)
    except BaseException:
        # What the browser showed and said, to tell a broken page from a slow job.
        shots(page, "failure")
        print("page:", page.inner_text("body")[:3000], "console:", *console[-30:], sep="\n")
        print("jobs:", json.dumps(running_service.http().get("/jobs").json(), indent=1)[:4000])
        raise


def _drive_the_dashboard(page, running_service, tmp_path, shots) -> None:
    api = running_service.http()
    # Nothing is readable without the key, the dashboard's data included.
    assert httpx.get(f"{running_service.url}/datasets").status_code == 401
    teacher = sample_teacher()
    train_file, validation_files = _corpus(tmp_path)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))

    # The page asks for the key once; a wrong one is refused and asked again.
    page.goto(f"{running_service.url}/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "not-the-key")
    page.click("#key-form button[type=submit]")
    _wait_text(page, "#key-error", "refused", timeout_s=10)
    page.fill("#key-input", SERVICE_KEY)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#datasets-table")

    # Upload a corpus and prepare it.
    page.fill("#ds-name", "browser-upload")
    page.fill("#ds-teacher", teacher)
    page.set_input_files("#ds-train-files", str(train_file))
    page.set_input_files("#ds-validation-files", [str(p) for p in validation_files])
    page.click("#ds-submit")
    _wait_text(page, "#flash", "queued for preparation", timeout_s=30)
    dataset = api.get("/datasets").json()["data"][0]
    assert dataset["name"] == "browser-upload"
    row = page.locator(f"tr[data-dataset='{dataset['id']}']")
    row.locator(".badge.ready").wait_for(timeout=120_000)
    dataset = api.get(f"/datasets/{dataset['id']}").json()
    documents = sum(s["documents"] for s in dataset["splits"].values())
    assert row.locator("td").nth(4).inner_text() == f"{documents:,}"
    assert "uploads/" in row.inner_text()
    shots(page, "datasets")

    # Train from the dataset; the job page draws the curve from the event stream as it grows.
    row.locator("a", has_text="Train").click()
    page.fill("#tr-steps", str(TRAIN_STEPS))
    page.fill("#tr-batch", "8")
    page.fill("#tr-eval", str(VALIDATE_EVERY))
    page.click("#tr-submit")
    page.wait_for_url("**/#/jobs/*")
    job_id = int(page.url.rsplit("/", 1)[1])
    curve = page.locator("#loss-chart path[data-series='train loss']")
    seen: list[int] = []
    live_seen = False
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        live_seen |= page.locator("#live").inner_text() == "live"
        if curve.count():
            count = int(curve.get_attribute("data-count"))
            if not seen or seen[-1] != count:
                seen.append(count)
        if page.locator("#job-status .badge.succeeded").count() and seen[-1:] == [TRAIN_STEPS]:
            break
        page.wait_for_timeout(100)
    assert page.locator("#job-status .badge.succeeded").count(), page.inner_text("#page")
    assert live_seen, "the job page never followed the event stream"
    assert seen[-1] == TRAIN_STEPS == api.get(f"/jobs/{job_id}/metrics").json()["count"]
    assert len(seen) >= 3 and seen == sorted(seen), f"the curve did not grow while running: {seen}"
    validation_points = page.locator("#loss-chart path[data-series='validation loss']")
    assert int(validation_points.get_attribute("data-count")) == TRAIN_STEPS // VALIDATE_EVERY
    shots(page, "job")
    model_id = api.get(f"/jobs/{job_id}").json()["result"]["model_id"]

    # Cancel a long run from the jobs page.
    page.goto(f"{running_service.url}/ui/#/train/{dataset['id']}")
    page.fill("#tr-steps", "100000")
    page.fill("#tr-batch", "8")
    page.click("#tr-submit")
    page.wait_for_url("**/#/jobs/*")
    long_job = int(page.url.rsplit("/", 1)[1])
    page.click("nav a[data-page=jobs]")
    job_row = page.locator(f"tr[data-job='{long_job}']")
    job_row.locator(".badge.running").wait_for(timeout=60_000)  # a running job, not a queued one
    job_row.locator("button", has_text="Cancel").click()
    job_row.locator(".badge.cancelled").wait_for(timeout=60_000)
    shots(page, "jobs")

    # Evaluate the trained model: the gap-recovered table and the per-position plot.
    page.goto(f"{running_service.url}/ui/#/models/{model_id}")
    page.fill("#eval-form input[name=max_examples]", "64")
    page.fill("#eval-form input[name=bootstrap_samples]", "50")
    page.click("#eval-submit")
    page.wait_for_selector("#gap-table", timeout=120_000)
    report = api.get(f"/models/{model_id}").json()["latest_evaluation"]["report"]
    for name, condition in report["conditions"].items():
        cells = page.locator(f"#gap-table tr[data-condition='{name}'] td")
        assert cells.nth(1).inner_text().startswith(f"{condition['nll']['value']:.3f}")
    plotted = page.locator("#position-chart path[data-series]")
    assert plotted.count() == len(report["conditions"])
    assert int(plotted.first.get_attribute("data-count")) == report["horizon_tokens"]
    shots(page, "model")

    # Try it: a story's blocks, their gists' norms and cosine similarities.
    story = tiny_documents(1, seed=99)[0]
    page.click("nav a[data-page=try]")
    page.select_option("#try-model", str(model_id))
    page.fill("#try-text", story)
    page.click("#try-submit")
    page.wait_for_selector("#blocks-table")
    answer = api.post("/gist", json={"text": story, "model_id": model_id}).json()
    assert page.locator("#blocks-table tbody tr").count() == len(answer["gists"])
    assert page.locator("#blocks-table tbody tr").first.locator(".block-text").inner_text() == (
        answer["block_texts"][0].strip()
    )
    diagonal = page.locator("#cosine-table tbody tr").first.locator("td").first
    assert diagonal.inner_text() == "1.00"
    shots(page, "try")

    # The story as a context read three ways, each row as /generate and /score answer it.
    prompt = " Then"
    page.select_option("#context-model", str(model_id))
    page.fill("#context-text", story)
    page.fill("#context-prompt", prompt)
    page.fill("#context-tokens", "6")
    page.click("#context-submit")
    page.wait_for_selector("#context-table tr[data-context=truncated]", timeout=60_000)

    def read(part: dict) -> tuple[dict, dict]:
        body = {"model_id": model_id, "context": [part]}
        generated = api.post("/generate", json={**body, "prompt": prompt, "max_new_tokens": 6})
        scored = api.post("/score", json={**body, "continuation": prompt})
        return generated.json(), scored.json()

    compressed = read({"compress": story})
    budget = compressed[0]["context_length"] - compressed[0]["prompt_tokens"]
    readings = {
        "full": read({"text": story}),
        "truncated": read({"text": story, "keep_last": budget}),
        "compressed": compressed,
    }
    for name, (generated, scored) in readings.items():
        cells = page.locator(f"#context-table tr[data-context={name}] td")
        assert cells.nth(1).inner_text() == f"{generated['context_length']:,}"
        assert cells.nth(3).inner_text() == f"{scored['mean_nll']:.4f}"
        assert cells.nth(4).inner_text().strip() == generated["text"].strip()
    assert readings["truncated"][0]["context_length"] == compressed[0]["context_length"]
    assert compressed[0]["context_length"] < readings["full"][0]["context_length"]
    shots(page, "try-context")
    assert not errors, errors
