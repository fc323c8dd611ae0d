"""Prefect deployments of the flows (work pools, schedules, UI-triggered runs)."""
