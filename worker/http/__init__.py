"""``dialer serve``: the HTTP API, metrics, health probes and the operator dashboard (aiohttp).

::

    from worker.http import create_app
    app = create_app(settings, redis)     # an aiohttp.web.Application
"""

from worker.http.app import DEFAULT_MODULES, create_app
from worker.http.routing import Access, Param, Reply, Route

__all__ = ["DEFAULT_MODULES", "Access", "Param", "Reply", "Route", "create_app"]
