"""The fault suite (issue 7): scenarios R1..R6 that break things on purpose and reconcile what happened.

Short versions run with the normal suite; ``DIALER_FAULTS=full`` (or ``scripts/faults``) runs the full
ones. Each scenario prints its figures and asserts them; ``RELIABILITY.md`` holds the last full run's.
"""
