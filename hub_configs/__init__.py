"""Presets (model shapes with their usual Hub components) and training recipes, as data files."""
