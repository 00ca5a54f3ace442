"""The workflow document: format 1 as pydantic models, the typed immutable tree, reading it from JSON or a PNG. Knows nothing of node types."""
