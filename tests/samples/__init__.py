"""Per-family layer samples for tests/test_registry.py."""
