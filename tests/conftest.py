"""Shared fixtures: a real S3 API (moto's standalone server on 127.0.0.1) and stores on it."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

os.environ.setdefault("SIGHTSOUND_CACHE", os.path.join(os.path.dirname(__file__), "..", "data", ".cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server, started once for the session and stopped after."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_store(s3_endpoint):
    """An ObjectStore on a fresh bucket of the moto server."""
    import s3fs

    from sightsound_core.storage import ObjectStore

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}, "key": "testing", "secret": "testing"}
    bucket = f"test-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return ObjectStore(f"s3://{bucket}/root", options)


@pytest.fixture
def file_store(tmp_path):
    from sightsound_core.storage import ObjectStore

    return ObjectStore(f"file://{tmp_path}/store")


@pytest.fixture(params=["file", "s3"])
def store(request):
    """Both backends: every storage test runs on a local disk and on the S3 API."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def openai_server():
    """A started ``FakeOpenAIServer`` on 127.0.0.1 (no latency, no faults until ``configure``);
    stopped after the test. Its ``url`` is a ``base_url`` for ``ClientConfig``."""
    from fakes.openai_server import FakeOpenAIServer

    with FakeOpenAIServer(seed=0) as server:
        yield server


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server (SQLite) shared by every test of the session that needs one."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
