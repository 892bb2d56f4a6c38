"""Where jobs keep their files, relative to the artifact root: one convention for the
workers that write them and the API and sweep that tidy them up."""

from __future__ import annotations

from pathlib import Path

RESUME_NAME = "resume.pt"


def dataset_dir(dataset_id: int) -> str:
    return f"datasets/{dataset_id}"


def job_dir(job_id: int) -> str:
    return f"jobs/{job_id}"


def evaluation_dir(evaluation_id: int) -> str:
    return f"evaluations/{evaluation_id}"


def resume_checkpoint(job_id: int) -> str:
    """A training job's resume checkpoint: needed only while the job may run again."""
    return f"{job_dir(job_id)}/{RESUME_NAME}"


def remove_resume_checkpoint(artifact_root: Path, job_id: int) -> bool:
    """Delete the resume checkpoint of a job that will not run again. Returns whether
    there was one."""
    path = artifact_root.resolve() / resume_checkpoint(job_id)
    existed = path.exists()
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # a save cut short
    return existed
