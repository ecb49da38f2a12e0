"""Small built-in datasets that need no download."""
