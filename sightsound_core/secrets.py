"""API keys: resolved at call time, never stored in configs, redacted from every log record.

A key comes from an environment variable (``api_key_env``) or, when that is unset, from a named
secret store such as a Prefect Secret block (``api_key_secret``). The core never imports Prefect:
the orchestration layer registers the loader once, for example in ``tasks/``::

    from prefect.blocks.system import Secret
    from sightsound_core import secrets
    secrets.set_secret_loader(lambda name: Secret.load(name).get())

Only the names of the variable and of the block live in configs, so a key can never reach a
content hash, a manifest, a Prefect parameter or a Parquet file through the config. Every value
``resolve_api_key`` returns is registered for redaction, and ``install_log_redaction`` rewrites
each log record (message, arguments and traceback text) before any handler sees it.

>>> register_secret("sk-test-0123456789")
>>> redact("Authorization: Bearer sk-test-0123456789")
'Authorization: Bearer [REDACTED]'
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Callable

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
# Shorter values (empty strings, "1") would redact ordinary text and hide nothing of value.
_MIN_SECRET_LEN = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_loader: Callable[[str], str] | None = None
_installed = False


class MissingSecretError(ValueError):
    """No key under the configured names; the message names where it looked, never a value."""


def set_secret_loader(loader: Callable[[str], str] | None) -> None:
    """Register how a secret-block name becomes its value (``None`` unregisters)."""
    global _loader
    _loader = loader


def register_secret(value: str | None) -> None:
    """Add a value to the set ``redact`` removes from text."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    for value in _secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def resolve_api_key(env: str | None, secret: str | None = None) -> str | None:
    """The key from ``$env``, else from the secret block named ``secret``; ``None`` when neither
    name is configured (servers that need no key). Raises MissingSecretError when a configured
    name holds nothing.
    """
    if env and os.environ.get(env):
        value = os.environ[env]
    elif secret:
        if _loader is None:
            raise MissingSecretError(
                f"api key: ${env or '(no env var)'} is unset and no secret loader is registered "
                f"to read secret block {secret!r} (see sightsound_core.secrets)"
            )
        value = _loader(secret)
        if not value:
            raise MissingSecretError(f"api key: secret block {secret!r} is empty")
    elif env:
        raise MissingSecretError(f"api key: environment variable ${env} is unset")
    else:
        return None
    register_secret(value)
    install_log_redaction()
    return value


def install_log_redaction() -> None:
    """Redact registered secrets from every log record created from now on (idempotent).

    A record factory, not a handler filter: it covers every logger and every handler, including
    ones configured later (Prefect's), and it formats the message once, so a secret passed as a
    ``%s`` argument or inside an exception's traceback is gone before any handler runs.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string is the logger's problem, not ours
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
        return record

    logging.setLogRecordFactory(factory)
