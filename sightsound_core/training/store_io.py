"""How training reads clips from and writes checkpoints to the object store.

Shared by the in-process training stage (``training.stages``) and each process that
``accelerate launch`` starts (``training.launch``), which must not import one another.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import numpy as np

from sightsound_core.storage import ObjectStore, join

log = logging.getLogger(__name__)

# Written into an uploaded checkpoint folder after its files: a folder without it was cut short.
UPLOADED = "_UPLOADED"


def audio_loader(store: ObjectStore) -> Callable[[str], np.ndarray]:
    """A cached 16 kHz loader for training: each clip is decoded once per process."""
    # PyAV is imported on first use: a process that trains on in-memory audio (the throughput
    # benchmark) runs where av is not installed.
    from sightsound_core.media.decode import load_audio

    @functools.lru_cache(maxsize=8192)
    def load(uri: str) -> np.ndarray:
        return load_audio(uri, storage_options=store.storage_options)

    return load


def make_uploader(store: ObjectStore, base: str) -> Callable[[str], None]:
    """Upload each local checkpoint folder under ``base``, marker last."""

    def upload(local_checkpoint: str) -> None:
        target = join(base, os.path.basename(local_checkpoint.rstrip("/")))
        store.put_dir(local_checkpoint, target)
        store.write_bytes(join(target, UPLOADED), b"")
        log.info("uploaded %s", target)

    return upload
