"""Where jobs keep their files, relative to the artifact root: one convention for the
workers that write them and the API and sweep that tidy them up."""

from __future__ import annotations

from gistnet.storage import ArtifactStore

RESUME_NAME = "resume.pt"


def dataset_dir(dataset_id: int) -> str:
    return f"datasets/{dataset_id}"


def job_dir(job_id: int) -> str:
    return f"jobs/{job_id}"


def evaluation_dir(evaluation_id: int) -> str:
    return f"evaluations/{evaluation_id}"


def memory_dir(memory_id: int) -> str:
    return f"memories/{memory_id}"


def memory_file(memory_id: int) -> str:
    """A memory's gists and token ids (numpy's .npz, read without unpickling)."""
    return f"{memory_dir(memory_id)}/memory.npz"


def resume_checkpoint(job_id: int) -> str:
    """A training job's resume checkpoint: needed only while the job may run again."""
    return f"{job_dir(job_id)}/{RESUME_NAME}"


def remove_resume_checkpoint(store: ArtifactStore, job_id: int) -> None:
    """Delete the resume checkpoint of a job that will not run again, wherever the store
    keeps it (a folder or a bucket), and a save of it that was cut short."""
    store.delete(resume_checkpoint(job_id))
    store.delete(resume_checkpoint(job_id) + ".tmp")


def remove_dataset_files(store: ArtifactStore, dataset_id: int) -> None:
    """Delete everything a dataset's jobs wrote (shards, part manifests, metadata): for a
    dataset that failed or was cancelled, or one that is deleted."""
    store.delete_folder(dataset_dir(dataset_id))


def datasets_with_files(store: ArtifactStore) -> list[int]:
    """The ids of the datasets that have a folder under the artifact root."""
    return [int(name) for name in store.folders("datasets") if name.isdigit()]
