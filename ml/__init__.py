"""Workloads, features, models and training (later issues)."""
