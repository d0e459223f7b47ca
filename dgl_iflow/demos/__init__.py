"""Runnable demonstrations of the library's results."""
