"""Synthetic data and the simulated vision-language model for offline runs and tests."""
