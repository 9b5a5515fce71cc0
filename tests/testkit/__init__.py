"""Shared test helpers (importable from any test: pytest puts tests/ on sys.path)."""
