"""Kept for imports written before `editkit.evaluation`: the same public names, from there."""

from editkit.evaluation import *  # noqa: F401,F403
from editkit.evaluation import __all__  # noqa: F401
