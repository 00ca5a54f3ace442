"""The version, read by pyproject.toml (dynamic) and shown by `graphflow --version` and the server."""

__version__ = "0.1.0"
