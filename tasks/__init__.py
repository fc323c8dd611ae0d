"""Prefect tasks, one module per flowchart stage; thin wrappers over `streamvln_model`."""
