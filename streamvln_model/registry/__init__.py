"""Trained models in use: the MLflow registry and its cache, the pyfunc, inference, held-out scores."""
