"""Checkpoints: every save mode in the published layout, header checks, the reload probe, loading."""
