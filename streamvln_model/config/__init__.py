"""The run's settings: the one flag schema, what each published flag does, preflight, strategies."""
