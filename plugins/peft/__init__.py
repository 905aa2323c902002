"""Built-in peft plugins."""
