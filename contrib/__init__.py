"""Optional adapters for treadle (retry, rollback, logging), importable as ``treadle.contrib``."""
