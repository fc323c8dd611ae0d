"""Navigation trajectory data: validation, the sample index, the dataset and its collator."""
