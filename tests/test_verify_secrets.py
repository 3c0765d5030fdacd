"""A planted API key reaches the server and nowhere else: not logs, exceptions, Parquet, manifests,
the run index, part files, configs, or Prefect artifacts, logs and parameters."""

from __future__ import annotations

import io
import logging
import os
import uuid

import pytest

from fakes.verify_world import make_world
from sightsound_core import secrets
from sightsound_core.config import VerifyConfig
from sightsound_core.storage import ObjectStore
from sightsound_core.verify import run_verify


@pytest.fixture
def planted(monkeypatch):
    key = f"sk-planted-{uuid.uuid4().hex}"
    monkeypatch.setenv("SIGHTSOUND_TEST_KEY", key)
    return key


@pytest.fixture
def all_logs():
    """Every record of every logger at DEBUG, formatted with tracebacks."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield buf
    root.removeHandler(handler)
    root.setLevel(old)


def _files_under(path: str) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                out[os.path.join(folder, name)] = fh.read()
    return out


def _cfg(server, **kw) -> VerifyConfig:
    base = dict(backend="openai", model="fake-audio", base_url=server.url, api_key_env="SIGHTSOUND_TEST_KEY",
                samples_per_clip=2, max_retries=1, timeout_s=0.5, backoff_base_s=0.01, backoff_max_s=0.02,
                part_size=4)
    return VerifyConfig(**{**base, **kw})


def test_planted_key_appears_nowhere(tmp_path, openai_server, planted, all_logs, monkeypatch):
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=40, samples_per_clip=2, clips_per_shard=10)
    openai_server.configure(api_key=planted, p429=0.1, p500=0.1, p_timeout=0.05, p_malformed=0.05)
    cfg = _cfg(openai_server)

    # The key works (the server checks it), through retries and failures.
    ref = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    statuses = ref.manifest["summary"]["statuses"]
    assert statuses.get("accepted", 0) + statuses.get("rejected", 0) > 40 and "401" not in openai_server.outcomes

    # A wrong key: the server's 401 quotes it, the client logs the detail.
    wrong = f"sk-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("SIGHTSOUND_TEST_KEY", wrong)
    ref2 = run_verify(_cfg(openai_server, max_new_tokens=64), store, "r", refs["clips"], refs["samples"], refs["votes"])
    assert ref2.manifest["summary"]["errors"] == {"http_401": 80}
    assert "Incorrect API key provided: [REDACTED]" in all_logs.getvalue()

    # A traceback holding a key is redacted too.
    try:
        raise RuntimeError(f"request failed with key {planted}")
    except RuntimeError:
        logging.getLogger("sightsound_core.test").exception("call failed")
    assert "request failed with key [REDACTED]" in all_logs.getvalue()

    with pytest.raises(secrets.MissingSecretError) as missing:
        secrets.resolve_api_key("SIGHTSOUND_UNSET_VAR_XYZ")

    haystacks = {
        "logs": all_logs.getvalue().encode(),
        "exception": str(missing.value).encode(),
        "config": (cfg.model_dump_json() + repr(cfg) + str(cfg.hash_payload())).encode(),
        **_files_under(str(tmp_path / "store")),  # Parquet shards, quarantine, manifests, run index
    }
    assert any(name.endswith(".parquet") for name in haystacks)
    assert any(name.endswith("_MANIFEST.json") for name in haystacks)
    for name, data in haystacks.items():
        for key in (planted, wrong):
            assert key.encode() not in data, f"key found in {name}"


def test_key_from_a_prefect_secret_block_stays_out_of_prefect(tmp_path, openai_server, prefect_harness, monkeypatch):
    from prefect import flow, get_run_logger, task
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client

    key = f"sk-block-{uuid.uuid4().hex}"
    Secret(value=key).save("sightsound-test-verifier-key", overwrite=True)
    monkeypatch.setattr(secrets, "_loader", None)
    secrets.set_secret_loader(lambda name: Secret.load(name).get())

    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=10, samples_per_clip=2, clips_per_shard=5)
    openai_server.configure(api_key=key, p500=0.2)
    cfg = _cfg(openai_server, api_key_env="SIGHTSOUND_UNSET_VAR_XYZ", api_key_secret="sightsound-test-verifier-key")

    @task
    def verify_task(cfg: VerifyConfig) -> dict:
        ref = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
        get_run_logger().info("verify committed %s with %s", ref.dir, ref.manifest["summary"])
        return ref.manifest["summary"]

    @flow
    def verify_flow(cfg: VerifyConfig) -> dict:
        summary = verify_task(cfg)
        create_markdown_artifact(markdown=f"# Verify\n\n{summary}\n\n{cfg!r}", key="verify-summary")
        create_table_artifact(table=[{"status": k, "n": v} for k, v in summary["statuses"].items()],
                              key="verify-statuses")
        return summary

    state = verify_flow(cfg, return_state=True)
    summary = state.result()
    assert summary["statuses"]["accepted"] + summary["statuses"]["rejected"] >= 10  # the block's key works
    assert "401" not in openai_server.outcomes

    async def read_prefect() -> list[str]:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
        return [str(run.parameters), str(run.state)] + [str(a.data) + str(a.description) for a in artifacts] + [
            log.message for log in logs
        ]

    import asyncio

    texts = asyncio.run(read_prefect())
    assert any("verify-summary" in t or "# Verify" in t for t in texts)
    for text in texts:
        assert key not in text
    for name, data in _files_under(str(tmp_path / "store")).items():
        assert key.encode() not in data, name
