"""Bytes from a URL to the disk, and what happens to the disk afterwards."""
