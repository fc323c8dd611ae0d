"""Frames and videos: ordering, decoding, SigLIP preprocessing and the published augmentation."""
