"""Engines: everything here speaks numpy arrays in pixels and 0-based frames, never HTTP or platform JSON."""
