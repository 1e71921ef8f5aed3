"""Imports every pass module so that they register themselves. Add new pass files here."""
from . import canonicalize, cse, dce, fold_constants, verify  # noqa: F401  (cleanup passes)
