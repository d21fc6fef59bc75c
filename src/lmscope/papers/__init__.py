"""The 2025 papers: in-context learning as an implicit rank-1 update, concept-injection introspection,
weight-sparse transformers."""
