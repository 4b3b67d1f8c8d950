"""Benchmarks of voice-dialer against vanilla arq and the provider's limit (issue 6).

Run ``python -m bench`` (everything, several runs, writes BENCHMARKS.md), ``python -m bench --quick``
(small sizes, one run, a few minutes) or ``python -m bench P1 P5`` (some). Every benchmark starts its
own redis-server and provider simulator on free ports and stops every child it started.
"""
