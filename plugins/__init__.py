"""Built-in hgltr plugins; each module is registered through its own entry point in pyproject.toml."""
