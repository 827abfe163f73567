"""The shipped experiment and sweep configs, as package data (read through importlib.resources)."""
