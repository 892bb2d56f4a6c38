"""gistnet.tracking: a training run read back by TensorBoard's own event reader and by
MLflow's own client, as a user would look at it."""

from __future__ import annotations

import pytest

from gistnet.config import validate_run_config
from gistnet.tracking import Tracking, TrackingSettings, flat_params
from gistnet.train import train_gistnet
from gistnet.train_request import TrainRequest, TrainSettings

RUN = {"training": {"max_steps": 4, "batch_size": 4, "device": "cpu", "eval_every": 2}}


def _train(small_dataset, out, tracking):
    return train_gistnet(
        TrainRequest(
            dataset=small_dataset / "train.arrow",
            output_dir=out,
            settings=TrainSettings(run=validate_run_config(RUN)),
        ),
        on_progress=tracking.progress,
    )


def test_a_run_reads_back_in_tensorboard_and_mlflow(small_dataset, tmp_path):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = TrackingSettings(
        tensorboard=str(tmp_path / "tb"), mlflow=str(tmp_path / "mlruns"), run_name="tiny"
    )
    with Tracking(settings, params=RUN) as tracking:
        result = _train(small_dataset, tmp_path / "out", tracking)
        tracking.log_artifacts(result.checkpoint_path)

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [1, 2, 3, 4]
    assert losses[-1].value == pytest.approx(result.final_loss, rel=1e-6)
    assert {"train/lr", "train/examples_per_sec", "val/loss"} <= set(events.Tags()["scalars"])

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run = client.get_run(tracking.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["training.max_steps"] == "4"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [2, 4]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["gistnet.pt"]

    with pytest.raises(RuntimeError), Tracking(settings, params=RUN) as failing:
        raise RuntimeError("the run broke")
    assert client.get_run(failing.mlflow_run_id).info.status == "FAILED"


def test_nested_config_becomes_dotted_parameters():
    assert flat_params({"model": {"hidden_size": 64, "teacher_layers": [0]}, "preset": None}) == {
        "model.hidden_size": "64",
        "model.teacher_layers": "[0]",
        "preset": "None",
    }


def test_the_training_command_logs_where_its_flags_say(small_dataset, tmp_path):
    import yaml
    from mlflow import MlflowClient

    from tools.train_gistnet import main

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RUN))
    argv = ["--dataset", str(small_dataset / "train.arrow"), "--config", str(config)]
    argv += ["--output-dir", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb")]
    argv += ["--mlflow", str(tmp_path / "ml"), "--experiment", "cli"]
    assert main(argv) == 0
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    client = MlflowClient(tracking_uri=(tmp_path / "ml").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["train_loss"] > 0

    from tools.evaluate_gistnet import main as evaluate

    argv = ["--checkpoint", str(tmp_path / "out" / "gistnet.pt"), "--dataset", str(small_dataset)]
    argv += ["--out", str(tmp_path / "eval"), "--max-examples", "8", "--bootstrap-samples", "20"]
    argv += ["--mlflow", str(tmp_path / "ml"), "--mlflow-run-id", run.info.run_id]
    assert evaluate(argv) == 0
    assert "eval_gist_gap_recovered" in client.get_run(run.info.run_id).data.metrics
    assert "evaluation/evaluation.json" in [  # the tool's report file
        a.path for a in client.list_artifacts(run.info.run_id, "evaluation")
    ]
