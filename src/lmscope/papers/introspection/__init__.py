"""Lindsey 2025, Emergent introspective awareness: concept injection and prefill trials."""
