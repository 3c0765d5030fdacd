"""Multi-GPU training: one training job run by ``accelerate launch``, one process per GPU.

The stage process stays the single owner of the job (it plans, uploads and commits); it writes a
job spec into a private temporary folder, starts ``accelerate launch`` on this module, streams the
processes' output into its own log and reads back the result the main process wrote. Every process
loads the same student and trains its share of each batch (DDP); the main process writes the
checkpoints (and uploads each one when the store is remote) and the merged model.

    python -m accelerate.commands.launch --multi_gpu --num_processes 8 \\
        -m sightsound_core.training.launch SPEC.json

The spec holds the store's options (they may carry credentials): its folder is readable by this
user only and is removed when the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from sightsound_core.config import GRPOConfig, LaunchConfig, SFTConfig
from sightsound_core.errors import OutOfMemoryError
from sightsound_core.schemas import GRPOExample, SFTExample
from sightsound_core.storage import ObjectStore
from sightsound_core.training import grpo, sft
from sightsound_core.training.store_io import audio_loader, make_uploader

log = logging.getLogger(__name__)

Phase = Literal["sft", "grpo"]
_EXAMPLES = {"sft": SFTExample, "grpo": GRPOExample}
_CONFIGS = {"sft": SFTConfig, "grpo": GRPOConfig}
_TAIL_LINES = 40


def launch_command(spec_path: str, launch: LaunchConfig, port: int) -> list[str]:
    """The ``accelerate launch`` command line for one job.

    Without a config file it is DDP on this machine (``--multi_gpu``: torchrun starts the
    processes; on a machine without GPUs they run on the CPU over gloo). Flags given here win
    over the config file's values.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if launch.accelerate_config:
        cmd += ["--config_file", launch.accelerate_config]
    else:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--num_processes", str(launch.num_processes), "--main_process_port", str(port)]
    return cmd + ["-m", __name__, spec_path]


def launch_training(
    phase: Phase,
    model_path: str,
    examples: list[SFTExample] | list[GRPOExample],
    cfg: SFTConfig | GRPOConfig,
    output_dir: str,
    store_root: str,
    storage_options: dict[str, Any],
    device: str,
    launch: LaunchConfig,
    upload_base: str | None = None,
) -> dict[str, Any]:
    """Run ``train_sft`` or ``train_grpo`` on ``launch.num_processes`` processes; return its result.

    ``upload_base``: where the main process uploads each checkpoint (None: the output folder is
    already in the store). A failed job raises ``RuntimeError`` with the end of its output, or
    ``errors.OutOfMemoryError`` (transient) when a process ran out of GPU memory.
    """
    private = tempfile.mkdtemp(prefix="sightsound-launch-")
    os.chmod(private, 0o700)
    try:
        examples_path = os.path.join(private, "examples.parquet")
        pq.write_table(_EXAMPLES[phase].to_table(list(examples)), examples_path)
        result_path = os.path.join(private, "result.json")
        spec = {
            "phase": phase,
            "model_path": model_path,
            "examples": examples_path,
            "config": cfg.model_dump(mode="json"),
            "output_dir": output_dir,
            "device": device,
            "store": {"root": store_root, "storage_options": storage_options},
            "upload_base": upload_base,
            "result": result_path,
        }
        spec_path = os.path.join(private, "spec.json")
        fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        cmd = launch_command(spec_path, launch, launch.main_process_port or _free_port())
        log.info("%s on %d processes: %s", phase, launch.num_processes, " ".join(cmd))
        _run(cmd, phase)
        return json.loads(Path(result_path).read_text())
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _run(cmd: list[str], phase: str) -> None:
    """Run the launcher, its output line by line into the log; raise with its tail on failure."""
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail.append(line)
        log.info("[%s] %s", phase, line)
    code = proc.wait()
    if code == 0:
        return
    text = "\n".join(tail)
    message = f"{phase} under accelerate launch exited with {code}; last lines:\n{text}"
    if "OutOfMemoryError" in text or "CUDA out of memory" in text:
        raise OutOfMemoryError(message)
    raise RuntimeError(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one process's part of the job described by ``spec`` (see ``launch_training``)."""
    phase: Phase = spec["phase"]
    cfg = _CONFIGS[phase].model_validate(spec["config"])
    examples = _EXAMPLES[phase].from_table(pq.read_table(spec["examples"]))
    store = ObjectStore(spec["store"]["root"], spec["store"]["storage_options"])
    upload = make_uploader(store, spec["upload_base"]) if spec["upload_base"] else None
    train = sft.train_sft if phase == "sft" else grpo.train_grpo
    return train(
        spec["model_path"], examples, cfg, spec["output_dir"], audio_loader(store), spec["device"],
        on_checkpoint=upload,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """One process's entry point; its exception is recorded for the launcher's failure summary."""
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(_main)(argv)


def _main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sightsound_core.training.launch SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    result = run_spec(spec)
    if int(os.environ.get("RANK", "0")) == 0:
        tmp = spec["result"] + ".tmp"
        Path(tmp).write_text(json.dumps(result))
        os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
