"""Training: the torchrun worker, the Trainer subclass and callbacks, the memory plan, run folders."""
