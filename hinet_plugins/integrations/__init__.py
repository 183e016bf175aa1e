"""Bridges to other libraries (optional extras; each module imports its library only when called)."""
