"""Runners, presets, sweeps and reports for FedSqueeze experiments."""
