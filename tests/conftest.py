"""Test-wide settings.

Hypothesis draws the same examples on every run (``derandomize``), so CI's result
depends only on the code: a property test that fails, fails for everyone, and a
green run stays green. To explore new examples, run e.g.
``DAITN_HYPOTHESIS=explore pytest tests/unit`` (random seeds, more examples).
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("DAITN_HYPOTHESIS", "ci"))
