"""Evaluation and experiments: test metrics, experiment grids, PR reports, the promotion gate."""
