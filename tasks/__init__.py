"""Thin Prefect tasks: retries, timeouts, cache policy, tags and names around core functions."""
