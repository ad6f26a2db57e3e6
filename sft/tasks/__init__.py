"""Synthetic chat tasks with exact-match scorers (the quickstart task and friends)."""
