"""Shipped hierarchy files for known datasets (see README.md here)."""
