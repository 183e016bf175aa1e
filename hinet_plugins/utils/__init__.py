"""Small utilities shared by models, scripts and tests."""
