"""Every input format: navigation trajectories, the co-training YAML, video QA, ScanQA and MMC4."""
