"""Hooks into basicsr's datasets (``unreadable_images``: the file of an undecodable image named)."""
