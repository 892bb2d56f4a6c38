"""gistnet.cache, the local copies of an object store's files, against a real S3-protocol
server: one dataset's files side by side, least recently used entries evicted past the
bound, two processes filling one entry at once."""

from __future__ import annotations

import multiprocessing
import os
import time

from gistnet.storage import ArtifactStore
from tests.gistnet.test_storage import make_store


def test_files_of_one_folder_are_cached_side_by_side(s3, tmp_path):
    store = make_store(s3, tmp_path)
    for name in ("train.arrow", "metadata.yaml"):
        (tmp_path / name).write_text(name)
        store.publish(tmp_path / name, f"datasets/7/{name}")
    shard = store.open_local("datasets/7/train.arrow")
    assert store.open_local("datasets/7/metadata.yaml") == shard.parent / "metadata.yaml"


def test_cache_evicts_least_recently_used_objects_beyond_its_bound(s3, tmp_path):
    store = make_store(s3, tmp_path, cache_max_bytes=2500)
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
        store.publish(tmp_path / name, f"objects/{name}")
    store.open_local("objects/a")
    time.sleep(0.02)
    store.open_local("objects/b")
    time.sleep(0.02)
    store.open_local("objects/a")  # a is now more recent than b
    time.sleep(0.02)
    store.open_local("objects/c")  # 3000 bytes > 2500: the least recently used (b) goes

    cached = {entry.url.rsplit("/", 1)[1] for entry in store.cache.entries()}
    assert cached == {"a", "c"}
    assert store.cache.total_bytes() <= 2500
    assert store.open_local("objects/b").read_bytes() == b"b" * 1000  # fetched again


def _fetch_in_process(args) -> tuple[str, bytes]:
    root, options, cache_dir = args
    store = ArtifactStore(root, storage_options=options, cache_dir=cache_dir)
    path = store.open_local("shared/shard.arrow")
    return str(path), path.read_bytes()


def test_two_processes_filling_one_entry_at_once_both_get_the_whole_file(s3, tmp_path):
    store = make_store(s3, tmp_path)
    payload = os.urandom(4 << 20)
    (tmp_path / "shard.arrow").write_bytes(payload)
    store.publish(tmp_path / "shard.arrow", "shared/shard.arrow")
    args = (store.root, s3.storage_options, str(tmp_path / "cache"))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_fetch_in_process, [args, args])
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1] == payload
    folder = os.path.dirname(results[0][0])
    assert [n for n in os.listdir(folder) if ".tmp-" in n] == []  # no half-written files
