"""The SightSound-R1 DAG, written once: the ordered stage specs every runner walks.

``STAGES`` is the one place the stage sequence is written. The plain loop
(``pipeline.run_pipeline``) and the Prefect flows (``flows/dag.py``) both call ``walk`` over it;
``status``'s order and upstream edges, the CLI's progress total and the Prefect tasks' ``gpu``
tag are derived from it. See docs/ARCHITECTURE.md, "The DAG spec".

Every stage has one shape, whatever its core module's own signatures::

    plan(cfg, store, inputs) -> StagePlan
    shard(cfg, store, inputs, job) -> (table, quarantine | None)
    summary(cfg, store, inputs, plan) -> dict          # optional: the manifest's summary

``inputs`` maps the names a stage reads its inputs by (``clips``, ``samples``…) to committed
outputs. An executor turns one stage and its inputs into a committed ``StageRef``: ``run_local``
here, shard by shard in this process; ``flows.dag.execute_stage`` as Prefect tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable, Iterable

import pyarrow as pa

from sightsound_core.config import PipelineConfig
from sightsound_core.corpus import corpus_work, plan_corpus
from sightsound_core.datasets.ingest import ingest_shard, plan_ingest
from sightsound_core.evaluation.run import (
    benchmark_config,
    evaluate_shard,
    evaluation_summary,
    plan_evaluate,
)
from sightsound_core.questions import plan_questions, questions_shard
from sightsound_core.report import plan_report, report_shard
from sightsound_core.stage import (
    ShardJob,
    StagePlan,
    StageRef,
    commit_shard,
    finalize,
    is_committed,
)
from sightsound_core.storage import ObjectStore
from sightsound_core.teacher import plan_teacher, plan_vote, teacher_shard, vote_shard, vote_stage_summary
from sightsound_core.training.stages import grpo_shard, model_paths, plan_grpo, plan_sft, sft_shard
from sightsound_core.verify import plan_verify, reopen, retryable_errors, verify_shard, verify_summary

Tables = tuple[pa.Table, "pa.Table | None"]


class Inputs(dict):
    """A stage's inputs by name, plus values computed once per stage run and shared by its
    shards and summary (``once``): the corpus reads its four inputs once, not once per shard."""

    def __init__(self, refs: dict[str, StageRef]):
        super().__init__(refs)
        self._memo: dict[str, Any] = {}
        self._lock = threading.Lock()

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._memo:
                self._memo[key] = make()
            return self._memo[key]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the DAG (or one instance of a stage that repeats, ``each``).

    - ``reads``: input name -> the stages that can provide it, first committed one wins (the
      teacher reads ``clips`` from ``questions`` when that stage ran, else from ``ingest``);
      a stage that repeats provides one input per instance, by the instance's name.
    - ``flow``: the Prefect flow that runs it (distill, train or evaluate).
    - ``when``: whether the recipe has this stage; ``each``: the keys of a repeated stage, one
      instance ``{name}-{key}`` each, whose ``plan``/``shard``/``summary`` take the key first.
    - ``reusable``: whether a committed shard is final (verify: not while it has error rows to
      ask again); ``reopen``: opens a committed stage for an in-place repair, returning the
      shards to redo (verify's repair path), called before any shard runs.
    """

    name: str
    flow: str
    reads: dict[str, tuple[str, ...]]
    plan: Callable[..., StagePlan]
    shard: Callable[..., Tables]
    summary: Callable[..., dict[str, Any]] | None = None
    gpu: bool = False
    when: Callable[[PipelineConfig], bool] = lambda cfg: True
    each: Callable[[PipelineConfig], list[str]] | None = None
    reusable: Callable[[ObjectStore, ShardJob], bool] = is_committed
    reopen: Callable[[ObjectStore, StagePlan], list[int]] | None = None

    def instances(self, cfg: PipelineConfig) -> list[Stage]:
        if not self.when(cfg):
            return []
        if self.each is None:
            return [self]
        return [self._instance(key) for key in self.each(cfg)]

    def _instance(self, key: str) -> Stage:
        bind = lambda fn: fn and functools.partial(fn, key)  # noqa: E731
        return dataclasses.replace(
            self, name=f"{self.name}-{key}", each=None,
            plan=bind(self.plan), shard=bind(self.shard), summary=bind(self.summary),
        )


# -- each stage in the one shape -------------------------------------------------------------------
def _plan_ingest(cfg, store, inputs):
    return plan_ingest(cfg.ingest, store, cfg.run)


def _ingest_shard(cfg, store, inputs, job):
    return ingest_shard(cfg.ingest, store, job)


def needs_question_stage(cfg: PipelineConfig) -> bool:
    """Unlabeled corpora (a video folder) get teacher-proposed questions before sampling."""
    return cfg.ingest.dataset == "folder"


def _plan_questions(cfg, store, inputs):
    return plan_questions(cfg.teacher, store, cfg.run, inputs["clips"])


def _questions_shard(cfg, store, inputs, job):
    return questions_shard(cfg.teacher, store, job)


def _plan_teacher(cfg, store, inputs):
    return plan_teacher(cfg.teacher, store, cfg.run, inputs["clips"])


def _teacher_shard(cfg, store, inputs, job):
    return teacher_shard(cfg.teacher, store, job)


def _plan_vote(cfg, store, inputs):
    return plan_vote(cfg.vote, store, cfg.run, inputs["clips"], inputs["samples"])


def _vote_shard(cfg, store, inputs, job):
    return vote_shard(cfg.vote, store, job)


def _vote_summary(cfg, store, inputs, plan):
    return vote_stage_summary(store, plan)


def _plan_verify(cfg, store, inputs):
    return plan_verify(cfg.verify, store, cfg.run, inputs["clips"], inputs["samples"], inputs["votes"])


def _verify_shard(cfg, store, inputs, job):
    # A committed shard is made again only to repair it: only its error rows are asked again.
    previous = store.read_table(job.output_uri) if is_committed(store, job) else None
    return verify_shard(cfg.verify, store, job, previous)


def _verify_final(store: ObjectStore, job: ShardJob) -> bool:
    return is_committed(store, job) and not retryable_errors(store, job)


def _verify_summary(cfg, store, inputs, plan):
    return verify_summary(store, plan)


def _plan_corpus(cfg, store, inputs):
    return plan_corpus(cfg, store, inputs)


def _corpus_work(cfg, store, inputs):
    return inputs.once("work", lambda: corpus_work(cfg, store, inputs))


def _corpus_shard(cfg, store, inputs, job):
    return _corpus_work(cfg, store, inputs)[0](job)


def _corpus_summary(cfg, store, inputs, plan):
    return _corpus_work(cfg, store, inputs)[1]()


def _plan_sft(cfg, store, inputs):
    return plan_sft(cfg, store, inputs["corpus"])


def _sft_shard(cfg, store, inputs, job):
    return sft_shard(cfg, store, job, inputs["corpus"])


def _grpo_enabled(cfg: PipelineConfig) -> bool:
    return cfg.grpo.enabled


def _plan_grpo(cfg, store, inputs):
    return plan_grpo(cfg, store, inputs["corpus"], inputs["sft"])


def _grpo_shard(cfg, store, inputs, job):
    return grpo_shard(cfg, store, job, inputs["corpus"], inputs["sft"])


BENCH = "bench"


def benchmark_stage(name: str) -> str:
    """The ingest stage of one evaluation benchmark."""
    return f"{BENCH}-{name}"


def _benchmark_names(cfg: PipelineConfig) -> list[str]:
    return [b.name for b in cfg.evaluate.benchmarks]


def _plan_bench(key, cfg, store, inputs):
    return plan_ingest(benchmark_config(cfg, key).ingest, store, cfg.run, benchmark_stage(key))


def _bench_shard(key, cfg, store, inputs, job):
    return ingest_shard(benchmark_config(cfg, key).ingest, store, job)


def _benchmarks(inputs: Inputs) -> dict[str, StageRef]:
    prefix = f"{BENCH}-"
    return {name[len(prefix):]: ref for name, ref in inputs.items() if name.startswith(prefix)}


def _models(cfg, store, inputs):
    return inputs.once("models", lambda: model_paths(cfg, store, inputs["sft"], inputs.get("grpo")))


def _plan_evaluate(cfg, store, inputs):
    return plan_evaluate(cfg, store, _models(cfg, store, inputs), _benchmarks(inputs))


def _evaluate_shard(cfg, store, inputs, job):
    return evaluate_shard(cfg, store, job, _models(cfg, store, inputs), _benchmarks(inputs))


def _evaluate_summary(cfg, store, inputs, plan):
    return evaluation_summary(store, plan, _benchmarks(inputs))


def _plan_report(cfg, store, inputs):
    return plan_report(store, cfg.run, inputs)


def _report_shard(cfg, store, inputs, job):
    return report_shard(store, job, cfg.run, inputs)


# -- the DAG ---------------------------------------------------------------------------------------
CLIPS = ("questions", "ingest")  # the clips the teacher saw: the proposed questions, when asked

STAGES: tuple[Stage, ...] = (
    Stage("ingest", "distill", {}, _plan_ingest, _ingest_shard),
    # Proposing questions runs the teacher's model: a GPU stage like the teacher.
    Stage("questions", "distill", {"clips": ("ingest",)}, _plan_questions, _questions_shard,
          gpu=True, when=needs_question_stage),
    Stage("teacher", "distill", {"clips": CLIPS}, _plan_teacher, _teacher_shard, gpu=True),
    Stage("vote", "distill", {"clips": CLIPS, "samples": ("teacher",)}, _plan_vote, _vote_shard,
          _vote_summary),
    Stage("verify", "distill", {"clips": CLIPS, "samples": ("teacher",), "votes": ("vote",)},
          _plan_verify, _verify_shard, _verify_summary, reusable=_verify_final, reopen=reopen),
    Stage("corpus", "train",
          {"clips": CLIPS, "samples": ("teacher",), "votes": ("vote",), "verdicts": ("verify",)},
          _plan_corpus, _corpus_shard, _corpus_summary),
    Stage("sft", "train", {"corpus": ("corpus",)}, _plan_sft, _sft_shard, gpu=True),
    Stage("grpo", "train", {"corpus": ("corpus",), "sft": ("sft",)}, _plan_grpo, _grpo_shard,
          gpu=True, when=_grpo_enabled),
    Stage(BENCH, "evaluate", {}, _plan_bench, _bench_shard, each=_benchmark_names),
    Stage("evaluate", "evaluate", {"sft": ("sft",), "grpo": ("grpo",), "benchmarks": (BENCH,)},
          _plan_evaluate, _evaluate_shard, _evaluate_summary, gpu=True),
    Stage("report", "evaluate",
          {"corpus": ("corpus",), "sft": ("sft",), "grpo": ("grpo",), "evaluate": ("evaluate",)},
          _plan_report, _report_shard),
)
SPECS = {s.name: s for s in STAGES}
ORDER = tuple(SPECS)
GPU_STAGES = frozenset(s.name for s in STAGES if s.gpu)


def stages(cfg: PipelineConfig, flow: str | None = None) -> list[Stage]:
    """The stages a recipe runs, in order (only those of ``flow`` when given)."""
    return [inst for s in STAGES if flow in (None, s.flow) for inst in s.instances(cfg)]


def kind_of(name: str) -> str:
    """The spec a stage directory belongs to: ``bench-mmau`` is a ``bench``.

    >>> kind_of("bench-mmau"), kind_of("verify")
    ('bench', 'verify')
    """
    if name in SPECS:
        return name
    head = name.split("-", 1)[0]
    return head if head in SPECS and SPECS[head].each is not None else name


def upstream_of(name: str, present: Iterable[str]) -> list[str]:
    """The stages among ``present`` that stage ``name`` reads, as ``gather`` would pick them."""
    spec = SPECS.get(kind_of(name))
    if spec is None:
        return []
    present = list(present)
    out: list[str] = []
    for candidates in spec.reads.values():
        for kind in candidates:
            found = [p for p in present if kind_of(p) == kind]
            if found:
                out += found
                break
    return out


def gather(stage: Stage, done: dict[str, StageRef]) -> Inputs:
    """``stage``'s inputs from the committed outputs so far (by stage name)."""
    picked: dict[str, StageRef] = {}
    for input_name, candidates in stage.reads.items():
        for kind in candidates:
            found = {n: ref for n, ref in done.items() if kind_of(n) == kind}
            if not found:
                continue
            if SPECS[kind].each is not None:
                picked.update(found)  # one input per instance, by its stage name
            else:
                picked[input_name] = found[kind]
            break
    return Inputs(picked)


# -- running a stage -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prepared:
    """A stage planned on its inputs: what an executor runs.

    ``work`` makes one shard final (reuses it, or computes and commits it) and returns its URI;
    ``repair`` names the committed shards being redone in place (an orchestrator's cache must
    not answer for them).
    """

    plan: StagePlan
    work: Callable[[ShardJob], str]
    summary: Callable[[], dict[str, Any]] | None
    repair: frozenset[int]


def prepare(
    stage: Stage, cfg: PipelineConfig, store: ObjectStore, inputs: Inputs, reopen: bool = True
) -> Prepared:
    """Plan ``stage`` on ``inputs``. ``reopen=False`` plans without opening a committed stage for
    repair: a worker running some of the shards of a stage its coordinator has already opened."""
    plan = stage.plan(cfg, store, inputs)
    repair = frozenset(stage.reopen(store, plan)) if stage.reopen and reopen else frozenset()

    def work(job: ShardJob) -> str:
        if stage.reusable(store, job):
            return job.output_uri
        table, quarantine = stage.shard(cfg, store, inputs, job)
        return commit_shard(store, job, table, quarantine)

    summary = stage.summary and (lambda: stage.summary(cfg, store, inputs, plan))
    return Prepared(plan, work, summary, repair)


Executor = Callable[[Stage, PipelineConfig, ObjectStore, Inputs], StageRef]


def run_local(stage: Stage, cfg: PipelineConfig, store: ObjectStore, inputs: Inputs) -> StageRef:
    """The plain executor: every shard in order in this process, then the manifest."""
    prepared = prepare(stage, cfg, store, inputs)
    for job in prepared.plan.jobs:
        prepared.work(job)
    return finalize(store, prepared.plan, prepared.summary)


def walk(
    cfg: PipelineConfig,
    store: ObjectStore,
    execute: Executor = run_local,
    flow: str | None = None,
    done: dict[str, StageRef] | None = None,
    on_stage: Callable[[str, StageRef], None] | None = None,
) -> dict[str, StageRef]:
    """Run (or reuse) the recipe's stages in order; each stage's committed output by name.

    ``flow`` limits the walk to one flow's stages, reading earlier ones from ``done``.
    """
    refs = dict(done or {})
    out: dict[str, StageRef] = {}
    for stage in stages(cfg, flow):
        ref = execute(stage, cfg, store, gather(stage, refs))
        refs[stage.name] = out[stage.name] = ref
        if on_stage:
            on_stage(stage.name, ref)
    return out
