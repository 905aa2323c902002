"""Built-in hierarchies plugins."""
