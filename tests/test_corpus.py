"""The corpus funnel counts the traces whose verify request failed."""

from fakes.verify_world import make_world
from sightsound_core.config import VerifyConfig
from sightsound_core.corpus import CorpusTables, funnel
from sightsound_core.schemas import Verdict
from sightsound_core.stage import read_all
from sightsound_core.storage import ObjectStore
from sightsound_core.verify import run_verify


def test_funnel_counts_verify_errors(tmp_path, openai_server):
    store = ObjectStore(f"file://{tmp_path}/store")
    refs = make_world(store, "r", str(tmp_path / "wav"), n_clips=20, samples_per_clip=2, clips_per_shard=10)
    openai_server.configure(p500=0.4)
    cfg = VerifyConfig(backend="openai", model="fake-audio", base_url=openai_server.url, api_key_env=None,
                       samples_per_clip=2, max_retries=0)
    verdicts = run_verify(cfg, store, "r", refs["clips"], refs["samples"], refs["votes"])
    errors = sum(v.status == "error" for v in Verdict.from_table(read_all(store, verdicts)))
    tables = CorpusTables(store, {"clips": refs["clips"], "samples": refs["samples"], "votes": refs["votes"],
                                  "verdicts": verdicts})
    counts = funnel(tables)
    assert counts["all"]["errors"] == errors > 0
    assert sum(f["errors"] for f in counts["by_family"].values()) == errors
