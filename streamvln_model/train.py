"""`torchrun -m streamvln_model.train <published flags>`: the published entry point, kept by name.

The worker itself is `streamvln_model/training/worker.py`; plan.json launches this module too.
"""

from streamvln_model.training.worker import main

if __name__ == "__main__":
    main()
