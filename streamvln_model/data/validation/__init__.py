"""Data checks before any GPU starts: the one check entry point, media decoding, problems, the report."""
