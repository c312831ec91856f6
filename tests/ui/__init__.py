"""Helpers for the monitoring page's browser tests (tests/test_ui*.py)."""
