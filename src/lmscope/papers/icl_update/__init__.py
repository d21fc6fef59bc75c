"""Dherin et al. 2025, Learning without training: in-context learning as an implicit rank-1 weight update."""
