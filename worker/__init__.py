"""voice-dialer: bulk outbound voice-notification calls through Huawei Cloud CEC, on arq + Redis.

The public API::

    from worker import enqueue_call, enqueue_many, CallRequest
"""

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
from worker.ledger.transitions import JobRecord, State
from worker.models import CallRequest, PlayItem, ReleaseEvent
from worker.settings import Settings, load_settings

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
