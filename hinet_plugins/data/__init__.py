"""Data helpers (demo/test datasets)."""
