"""`python -m streamvln_model.evaluate`: the held-out scoring entry point, kept by name.

The scorer itself is `streamvln_model/registry/heldout.py`.
"""

import sys

from streamvln_model.registry.heldout import main

if __name__ == "__main__":
    sys.exit(main())
