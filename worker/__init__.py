"""voice-dialer: bulk outbound voice-notification calls through Huawei Cloud CEC, on arq + Redis.

The public API::

    from worker import enqueue_call, enqueue_many, CallRequest

Each name is imported from its module on first use (PEP 562), so ``import worker`` (which every
``worker.*`` import runs first, ``dialer --help`` too) loads neither arq, redis nor pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and IDEs
    from worker.errors import (
        AmbiguousError,
        AuthError,
        DialerError,
        FieldError,
        InvalidRequest,
        PermanentError,
        ProviderError,
        RetriesExhausted,
        RetryableError,
        SettingsError,
    )
    from worker.ledger.producer import CallJob, EnqueueResult, Producer, enqueue_call, enqueue_many
    from worker.ledger.record import JobRecord
    from worker.ledger.states import State
    from worker.models import CallRequest, PlayItem, ReleaseEvent
    from worker.settings import Settings, load_settings

# Public name -> the module that defines it. Keep in step with the TYPE_CHECKING imports above and
# __all__ below (tests/test_imports.py checks all three).
_EXPORTS: dict[str, str] = {
    "AmbiguousError": "worker.errors",
    "AuthError": "worker.errors",
    "DialerError": "worker.errors",
    "FieldError": "worker.errors",
    "InvalidRequest": "worker.errors",
    "PermanentError": "worker.errors",
    "ProviderError": "worker.errors",
    "RetriesExhausted": "worker.errors",
    "RetryableError": "worker.errors",
    "SettingsError": "worker.errors",
    "CallJob": "worker.ledger.producer",
    "EnqueueResult": "worker.ledger.producer",
    "Producer": "worker.ledger.producer",
    "enqueue_call": "worker.ledger.producer",
    "enqueue_many": "worker.ledger.producer",
    "JobRecord": "worker.ledger.record",
    "State": "worker.ledger.states",
    "CallRequest": "worker.models",
    "PlayItem": "worker.models",
    "ReleaseEvent": "worker.models",
    "Settings": "worker.settings",
    "load_settings": "worker.settings",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:  # AttributeError lets ``from worker import metrics`` import the submodule
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "AmbiguousError",
    "AuthError",
    "CallJob",
    "CallRequest",
    "DialerError",
    "EnqueueResult",
    "FieldError",
    "InvalidRequest",
    "JobRecord",
    "PermanentError",
    "PlayItem",
    "Producer",
    "ProviderError",
    "ReleaseEvent",
    "RetriesExhausted",
    "RetryableError",
    "Settings",
    "SettingsError",
    "State",
    "enqueue_call",
    "enqueue_many",
    "load_settings",
]
