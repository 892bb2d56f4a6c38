"""gistnet.storage against a real S3-protocol server: publishing whole objects only, a
replaced object read anew, clear errors; the cache itself is tests/gistnet/test_cache.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gistnet.errors import StorageError
from gistnet.storage import UPLOADING, ArtifactStore
from tests.s3_server import s3_server

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_store(s3, tmp_path, bucket=None, **kwargs) -> ArtifactStore:
    bucket = bucket or s3.new_bucket()
    return ArtifactStore(
        f"s3://{bucket}/platform",
        storage_options=s3.storage_options,
        cache_dir=tmp_path / "cache",
        **kwargs,
    )


def test_published_file_reads_back_through_the_cache_and_a_replaced_object_is_refetched(
    s3, tmp_path
):
    store = make_store(s3, tmp_path)
    local = tmp_path / "shard.bin"
    local.write_bytes(b"first version")
    assert store.publish(local, "datasets/1/train.arrow").startswith("s3://")

    cached = store.open_local("datasets/1/train.arrow")
    assert cached.read_bytes() == b"first version"
    assert cached.is_relative_to(tmp_path / "cache")
    assert store.open_local("datasets/1/train.arrow") == cached  # a hit: same file

    local.write_bytes(b"second, longer version")
    store.publish(local, "datasets/1/train.arrow")
    assert store.open_local("datasets/1/train.arrow").read_bytes() == b"second, longer version"
    # Only finished objects are listed: no temporary upload keys are left behind.
    assert store.glob("datasets/**") == ["datasets/1/train.arrow"]


def test_missing_object_is_a_clear_error(s3, tmp_path):
    store = make_store(s3, tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        store.open_local("jobs/1/gistnet.pt")
    assert not store.exists("jobs/1/gistnet.pt")


def test_publisher_killed_mid_upload_leaves_nothing_taken_for_finished(s3, tmp_path):
    bucket = s3.new_bucket()
    store = make_store(s3, tmp_path, bucket=bucket)
    big = tmp_path / "big.arrow"
    big.write_bytes(os.urandom(1 << 20) * 30)  # 30 MiB: six 5 MiB parts
    script = textwrap.dedent(
        f"""
        from gistnet.storage import ArtifactStore
        store = ArtifactStore("s3://{bucket}/platform", storage_options={s3.storage_options!r},
                              cache_dir={str(tmp_path / "cache")!r}, part_bytes=5 << 20)
        store.publish({str(big)!r}, "datasets/9/train.arrow")
        """
    )
    publisher = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}
    )
    fs = s3.filesystem()
    deadline = time.monotonic() + 60
    try:
        while not fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads"):
            assert publisher.poll() is None, "the upload finished before it could be killed"
            assert time.monotonic() < deadline, "no multipart upload started"
            time.sleep(0.005)
    finally:
        publisher.send_signal(signal.SIGKILL)
        publisher.wait(timeout=30)

    assert not store.exists("datasets/9/train.arrow")
    with pytest.raises(StorageError, match="does not exist"):
        store.open_local("datasets/9/train.arrow")
    assert store.glob("datasets/**") == []
    # Whatever is left is a temporary key no reader asks for.
    leftovers = [p for p in fs.find(bucket) if "datasets/9" in p]
    assert all(UPLOADING in p for p in leftovers)

    store.publish(big, "datasets/9/train.arrow")  # a retry publishes it whole
    assert store.open_local("datasets/9/train.arrow").stat().st_size == big.stat().st_size


def test_missing_bucket_is_named_by_the_check(s3, tmp_path):
    store = ArtifactStore(
        "s3://no-such-bucket/platform",
        storage_options=s3.storage_options,
        cache_dir=tmp_path,
        setting="GISTNET_ARTIFACT_ROOT",
    )
    with pytest.raises(StorageError, match="bucket 'no-such-bucket'.*does not exist"):
        store.check()


def test_refused_credentials_are_named_by_the_check(tmp_path):
    with s3_server(authenticate=True) as server:
        store = ArtifactStore(
            "s3://any-bucket/platform",
            storage_options={**server.storage_options, "key": "wrong", "secret": "wrong"},
            cache_dir=tmp_path,
        )
        with pytest.raises(StorageError, match="refused the credentials"):
            store.check()


def test_local_root_reads_its_own_files_and_publishes_in_place(tmp_path):
    store = ArtifactStore(tmp_path / "artifacts", cache_dir=tmp_path / "cache")
    with store.writing("jobs/3") as folder:
        (folder / "gistnet.pt").write_bytes(b"weights")
        store.publish(folder / "gistnet.pt", "jobs/3/gistnet.pt")
    path = store.open_local("jobs/3/gistnet.pt")
    assert path == tmp_path / "artifacts" / "jobs" / "3" / "gistnet.pt"
    assert path.read_bytes() == b"weights"
    assert not (tmp_path / "cache").exists()  # no copy for a local root
    store.check(write=True)
