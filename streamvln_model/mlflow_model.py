"""The import path that models registered before the grouped layout pickled for their pyfunc class.

Their `python_model.pkl` names `streamvln_model.mlflow_model.StreamVLNPyfunc`; loading one in a
process that already imports this library finds the class here. The flavour itself lives in
`streamvln_model/registry/pyfunc.py` (tests/test_layout_compat.py loads such a model).
"""

from streamvln_model.registry.pyfunc import StreamVLNPyfunc

__all__ = ["StreamVLNPyfunc"]
