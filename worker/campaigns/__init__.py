"""Campaigns: launch a file of calls, pace it, hold it to calling windows and the do-not-call list,
pause, resume, cancel and report on it.

::

    from worker.campaigns import Campaigns, CampaignSpec, LaunchOptions, launch_file, Suppression

Modules: ``launch`` (CSV/JSONL -> validated rows -> enqueue), ``control`` (state in Redis and status),
``windows`` (calling windows, pure functions), ``suppression`` (do-not-call list), ``outcomes`` (result
callbacks and redials), ``commands`` (CLI).
"""

from worker.campaigns.control import CampaignError, Campaigns, CampaignSpec, ResumeResult, UnknownCampaign
from worker.campaigns.launch import (
    LaunchError,
    LaunchOptions,
    LaunchReport,
    RowError,
    launch_file,
    launch_rows,
    launch_text,
)
from worker.campaigns.outcomes import Outcomes, RedialPolicy
from worker.campaigns.suppression import Suppression
from worker.rules import normalize_number
from worker.windows import Window, WindowError

__all__ = [
    "CampaignError",
    "CampaignSpec",
    "Campaigns",
    "LaunchError",
    "LaunchOptions",
    "LaunchReport",
    "Outcomes",
    "RedialPolicy",
    "ResumeResult",
    "RowError",
    "Suppression",
    "UnknownCampaign",
    "Window",
    "WindowError",
    "launch_file",
    "launch_rows",
    "launch_text",
    "normalize_number",
]
