"""Lecture part 2: in-context-learning prompts, function vectors (Todd et al. 2024), task vectors (Hendel et al. 2023)."""
