"""Prefect flows composed of the stage tasks in `tasks/`."""
