"""Signed webhooks: ``dialer webhooks`` POSTs each job's events to its statusCallbackUrl.

* :mod:`~worker.webhooks.signing`: the signature (HMAC-SHA256 over ``<timestamp>.<body>``) and the headers;
* :mod:`~worker.webhooks.queue`: the delivery state in Redis (intake from the event stream, per-job
  queues, per-destination leases, retries, dead letters), each step one Lua script;
* :mod:`~worker.webhooks.delivery`: the delivery process (HTTP, backoff, SSRF filter, metrics, shutdown);
* :mod:`~worker.webhooks.commands`: ``dialer webhooks`` and ``dialer webhooks dead list|replay``.

How to verify a delivery, and what is retried when: docs/webhooks.md.
"""
