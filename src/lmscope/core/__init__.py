"""The core: models and their sites, tracing and editing, errors, and the helpers shared by every part."""

__version__ = "0.1.0"
