"""Helpers shared by the tests (no test module imports from another test module)."""
