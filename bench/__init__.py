"""Benchmarks: figures counted from API calls (botocore event hooks) or timed side by side in one run."""
