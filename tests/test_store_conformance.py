"""The store conformance suite over every store kind."""

from treadle.testing import StoreConformance


class TestConformance(StoreConformance):
    """Runs every conformance test over the memory and SQLite stores (see conftest.py)."""
