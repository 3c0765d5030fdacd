"""flows/fanout.py: the batch flow run in this process, and the coordinator's handling of its
batches' flow runs (the deployment runs are a test double here; test_fanout_workers.py runs real
workers)."""

import types
import uuid

import pytest

from flows.fanout import fan_out, portable_config, stage_batch
from sightsound_core.config import digest, load_config
from sightsound_core.dag import gather, prepare, run_local, stages
from sightsound_core.pipeline import open_store
from sightsound_core.stage import is_committed, load_ref

SMALL = {"ingest.synthetic.n_clips": 24, "ingest.shard_size": 6}


def _upstream(tmp_path, **extra):
    """The demo recipe, small, with ingest committed; the teacher stage and its inputs."""
    cfg = load_config("demo.yaml", {"store.root": f"file://{tmp_path}/store", **SMALL, **extra})
    store = open_store(cfg)
    ingest, teacher = stages(cfg, "distill")[:2]
    done = {"ingest": run_local(ingest, cfg, store, gather(ingest, {}))}
    return cfg, store, teacher, gather(teacher, done)


def _params(cfg, store, stage, inputs, shards):
    plan = stage.plan(cfg, store, inputs)
    return {"cfg": portable_config(cfg, store), "stage": stage.name, "stage_hash": plan.stage_hash,
            "inputs": {name: ref.dir for name, ref in inputs.items()}, "shards": shards}


def test_portable_config_has_an_absolute_root_and_no_credentials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo.yaml", {"store.root": "file://./data", "store.storage_options": {
        "key": "AKIA-SECRET", "secret": "s3cr3t", "client_kwargs": {"endpoint_url": "http://s3"}}})
    data = portable_config(cfg, open_store(cfg))
    assert data["store"]["root"] == f"file://{tmp_path}/data"
    assert data["store"]["storage_options"] == {"client_kwargs": {"endpoint_url": "http://s3"}}
    assert "AKIA-SECRET" not in str(data) and "s3cr3t" not in str(data)
    assert load_config("demo.yaml").model_validate(data).teacher == cfg.teacher


def test_a_batch_computes_its_shards_then_finds_them_committed(prefect_harness, tmp_path):
    cfg, store, teacher, inputs = _upstream(tmp_path)
    params = _params(cfg, store, teacher, inputs, [1, 3])
    first = stage_batch(**params)
    assert first == {"worker": None, "computed": [1, 3], "reused": []}
    jobs = teacher.plan(cfg, store, inputs).jobs
    assert [is_committed(store, job) for job in jobs] == [False, True, False, True]
    assert stage_batch(**params)["reused"] == [1, 3]


def test_a_batch_refuses_another_stage_hash_or_missing_shards(prefect_harness, tmp_path):
    cfg, store, teacher, inputs = _upstream(tmp_path)
    params = _params(cfg, store, teacher, inputs, [0])
    with pytest.raises(RuntimeError, match="same code and recipe"):
        stage_batch(**{**params, "stage_hash": "0" * 16})
    with pytest.raises(ValueError, match=r"no shards \[7\]"):
        stage_batch(**{**params, "shards": [0, 7]})
    missing = {**params, "inputs": {"clips": params["inputs"]["clips"] + "-gone"}}
    with pytest.raises(FileNotFoundError, match="not committed"):
        stage_batch(**missing)
    assert not any(is_committed(store, j) for j in teacher.plan(cfg, store, inputs).jobs)


class _Pool:
    """Stands in for a work pool and its server behind ``run_deployment`` and the client: each
    batch's flow run ends as ``script`` says for its first shard and attempt (a crashed run first
    commits half its shards, as a worker killed mid-batch would); other runs run the batch flow
    here and complete. ``running(...)`` adds a run left by an earlier coordinator, which completes
    the first time it is looked at."""

    def __init__(self, script):
        self.script = script
        self.runs: dict[uuid.UUID, types.SimpleNamespace] = {}
        self.calls: list[tuple[list[int], str]] = []

    def _run(self, name, parameters, tags, outcome, finish=None):
        state = types.SimpleNamespace(type=types.SimpleNamespace(value=outcome), name=outcome.title(),
                                      message="scripted")
        run = types.SimpleNamespace(id=uuid.uuid4(), name=name, state=state, tags=list(tags),
                                    parameters=parameters, finish=finish)
        self.runs[run.id] = run
        return run

    def run_deployment(self, name, parameters, flow_run_name, tags, **kw):
        shards = parameters["shards"]
        attempt = sum(1 for s, _ in self.calls if s == shards) + 1
        self.calls.append((shards, flow_run_name))
        outcome = self.script.get((shards[0], attempt), "COMPLETED")
        if outcome == "CRASHED":
            stage_batch(**{**parameters, "shards": shards[: len(shards) // 2]})
        elif outcome == "COMPLETED":
            stage_batch(**parameters)
        return self._run(flow_run_name, parameters, tags, outcome)

    def running(self, parameters, tags):
        return self._run("left-running", parameters, tags, "RUNNING",
                         finish=lambda: stage_batch(**parameters))

    def read_flow_run(self, run_id):
        run = self.runs[run_id]
        if run.finish is not None:
            run.finish()
            run.finish, run.state.type.value = None, "COMPLETED"
        return run

    def read_flow_runs(self, flow_run_filter):
        tags = set(flow_run_filter.tags.all_)
        kinds = {k.value for k in flow_run_filter.state.type.any_}
        return [r for r in self.runs.values() if tags <= set(r.tags) and r.state.type.value in kinds]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fan_out(monkeypatch, tmp_path, script, attempts=3):
    import flows.fanout

    cfg, store, teacher, inputs = _upstream(tmp_path, **{
        "orchestration.fanout": "stage-batch/test", "orchestration.shards_per_task": 2,
        "orchestration.fanout_attempts": attempts, "orchestration.fanout_poll_s": 0.01})
    pool = _Pool(script)
    monkeypatch.setattr(flows.fanout, "run_deployment", pool.run_deployment)
    monkeypatch.setattr(flows.fanout, "get_client", lambda sync_client: pool)
    prepared = prepare(teacher, cfg, store, inputs)
    pool.params = lambda shards: {**_params(cfg, store, teacher, inputs, shards), "refresh": []}
    return pool, store, prepared, lambda: fan_out(teacher, cfg, store, inputs, prepared)


def test_a_crashed_batch_is_asked_for_again_and_its_commits_are_kept(prefect_harness, monkeypatch, tmp_path):
    pool, store, prepared, run = _fan_out(monkeypatch, tmp_path, {(2, 1): "CRASHED"})
    run()
    assert [c[0] for c in pool.calls] == [[0, 1], [2, 3], [2, 3]]
    assert [c[1] for c in pool.calls][-1] == "teacher-00002-00003-try2"
    assert all(is_committed(store, job) for job in prepared.plan.jobs)
    # Only the shards the crash left are sent again once every other shard is committed.
    pool.calls.clear()
    run()
    assert pool.calls == []


def test_a_batch_that_keeps_crashing_or_fails_stops_the_stage(prefect_harness, monkeypatch, tmp_path):
    pool, store, prepared, run = _fan_out(
        monkeypatch, tmp_path, {(0, 1): "CRASHED", (0, 2): "CRASHED"}, attempts=2)
    with pytest.raises(RuntimeError, match="teacher-00000-00001-try2 ended Crashed after 2 run"):
        run()
    assert is_committed(store, prepared.plan.jobs[0]) and not is_committed(store, prepared.plan.jobs[1])

    pool, store, prepared, run = _fan_out(monkeypatch, tmp_path / "b", {(2, 1): "FAILED"})
    with pytest.raises(RuntimeError, match="ended Failed after 1 run"):
        run()
    assert [c[0] for c in pool.calls] == [[0, 1], [2, 3]]


def test_only_shards_not_yet_final_are_sent(prefect_harness, monkeypatch, tmp_path):
    pool, store, prepared, run = _fan_out(monkeypatch, tmp_path, {})
    for job in prepared.plan.jobs[:3]:
        prepared.work(job)
    run()
    assert [c[0] for c in pool.calls] == [[3]]
    assert load_ref(store, prepared.plan.dir) is None  # the manifest is the executor's to write


def test_a_batch_on_s3_takes_its_credentials_from_the_worker_environment(
    prefect_harness, monkeypatch, tmp_path, s3_store
):
    cfg = load_config("demo.yaml", {"store.root": s3_store.root,
                                    "store.storage_options": s3_store.storage_options, **SMALL})
    store = open_store(cfg)
    ingest, teacher = stages(cfg, "distill")[:2]
    inputs = gather(teacher, {"ingest": run_local(ingest, cfg, store, gather(ingest, {}))})
    params = _params(cfg, store, teacher, inputs, [0])
    assert "testing" not in str(params["cfg"]["store"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_store.storage_options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_store.storage_options["secret"])
    assert stage_batch(**params)["computed"] == [0]
    assert is_committed(store, teacher.plan(cfg, store, inputs).jobs[0])


def test_batches_an_earlier_coordinator_left_running_are_waited_for_not_sent_again(
    prefect_harness, monkeypatch, tmp_path
):
    pool, store, prepared, run = _fan_out(monkeypatch, tmp_path, {})
    # A crashed pipeline run had sent shards 1 and 2; that batch is still running.
    output = f"output:{digest(prepared.plan.dir, 16)}"
    left = pool.running(pool.params([1, 2]), ["stage:teacher", output])
    pool._run("old-failed", pool.params([0]), ["stage:teacher", output], "FAILED")  # ended: ignored
    run()
    assert [c[0] for c in pool.calls] == [[0, 3]]
    assert pool.runs[left.id].state.type.value == "COMPLETED"
    assert all(is_committed(store, job) for job in prepared.plan.jobs)
    assert all(output in r.tags for r in pool.runs.values())
