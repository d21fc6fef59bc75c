"""Text sets: bundled prompt sets written for the project, and readers for offline corpora."""
