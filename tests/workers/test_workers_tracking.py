"""POST /train's tracking: a worker's run read back by TensorBoard's event reader and by
MLflow's client, where the job's folder and the server's tracking URI say."""

from __future__ import annotations

from tests.service_stack import train_body, wait_for_job


def test_a_training_job_logs_to_tensorboard_and_mlflow_when_asked(
    stack, stack_client, stack_dataset
):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    body = train_body(stack_dataset["id"], max_steps=4)
    body["tracking"] = {"tensorboard": True, "mlflow": True, "experiment": "worker-test"}
    accepted = stack_client.post("/train", json=body)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(stack_client, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job

    events = EventAccumulator(str(stack.settings.artifact_path(f"jobs/{job['id']}/tensorboard")))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]

    from gistnet.tracking import mlflow_uri

    client = MlflowClient(tracking_uri=mlflow_uri(stack.settings.mlflow_tracking_uri))
    experiment = client.get_experiment_by_name("worker-test")
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = 'job-{job['id']}'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["training.max_steps"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2, 3, 4]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["gistnet.pt"]

    # The model's evaluation lands in its training's run: figures and report.
    evaluation = stack_client.post(
        "/evaluations",
        json={"model_id": job["result"]["model_id"], "dataset_id": stack_dataset["id"],
              "bootstrap_samples": 50},
    )  # fmt: skip
    assert evaluation.status_code == 202, evaluation.text
    assert wait_for_job(stack_client, evaluation.json()["job_id"])["status"] == "succeeded"
    report = stack_client.get(f"/evaluations/{evaluation.json()['evaluation_id']}").json()
    metrics = client.get_run(run.info.run_id).data.metrics
    expected = report["report"]["conditions"]["gist"]["gap_recovered"]["value"]
    assert metrics["eval_gist_gap_recovered"] == expected
    logged = [a.path for a in client.list_artifacts(run.info.run_id, "evaluation")]
    assert "evaluation/report.json" in logged
