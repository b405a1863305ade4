"""Fixtures of the launch tests: the real local Slurm fixture (`slurm`) lives in tests/conftest.py."""
