"""Process-wide set-up shared by the long-running commands: ``dialer worker``, ``serve``, ``simulator``."""

from __future__ import annotations

import gc


def freeze_start_up_objects() -> None:
    """Move every object alive now (the imports, the app) to the collector's permanent generation.

    They live as long as the process. Left where they are, every full collection walks them (~65,000
    in a worker or the simulator) and stops the event loop for 40-75 ms on 2 busy cores: an urgent
    call picked up then waits it out, and the simulator stamps the requests that arrive meanwhile in a
    bunch (BENCHMARKS.md, P1 and P2). Call it once, after start-up and before serving.
    """
    gc.freeze()
