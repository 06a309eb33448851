"""Helpers for the observability tests (test_otel.py, test_prometheus.py)."""
