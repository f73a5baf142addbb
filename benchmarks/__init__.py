"""The performance benchmark: ``python -m benchmarks.run`` (see README, "Performance")."""
