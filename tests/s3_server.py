"""A real S3-protocol server for the tests: moto's standalone server (the one s3fs's own
test suite runs) in a subprocess on 127.0.0.1 and a free port, with fake credentials."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Fake credentials: moto accepts any unless it is started with authentication on.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "gistnet-test",
    "AWS_SECRET_ACCESS_KEY": "gistnet-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen

    @property
    def storage_options(self) -> dict[str, str]:
        return {"endpoint_url": self.endpoint_url}

    @property
    def env(self) -> dict[str, str]:
        """What a client process needs: credentials and GISTNET_STORAGE_OPTIONS."""
        return {**CREDENTIALS, "GISTNET_STORAGE_OPTIONS": json.dumps(self.storage_options)}

    def filesystem(self, **options):
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint_url,
            key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
            **options,
        )

    def new_bucket(self, prefix: str = "gistnet") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        self.filesystem().mkdir(name)
        return name


@contextmanager
def s3_server(*, authenticate: bool = False) -> Iterator[S3Server]:
    """Start the server, wait until it answers, stop it afterwards. With `authenticate`,
    every request must carry keys the server knows (none here): for refused-credential tests."""
    port = free_port()
    env = {**os.environ, **CREDENTIALS}
    if authenticate:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's server did not start on {url}") from None
                time.sleep(0.1)
        yield S3Server(endpoint_url=url, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
