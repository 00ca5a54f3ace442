"""A document checked against the node types (check, scopes) and bound to parameter values (bind); Workflow, the Python face of both."""
