"""Node types: how one is declared (ports, kinds, context inputs, limits), the registry that finds them, the built-in nodes, and the JSON Schema built from them."""
