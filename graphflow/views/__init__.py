"""How runs, results and workflows look: one-line text for terminals, HTML for notebooks, diagrams (Mermaid, DOT)."""
