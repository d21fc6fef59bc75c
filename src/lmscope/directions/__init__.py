"""Lecture part 2, one layer: feature vectors (difference of means, PCA, probes), the selection sweep, steering,
directional ablation and weight orthogonalisation, vector files, the truth direction."""
