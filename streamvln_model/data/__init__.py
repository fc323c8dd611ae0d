"""Training data: formats, validation, the sample index, media and the datasets the Trainer reads."""
