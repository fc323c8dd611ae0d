"""What the Trainer iterates: sample windows, navigation and co-training datasets, the collator."""
