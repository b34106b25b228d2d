"""Talking to a model: `minillava chat` in the terminal ([`terminal`]) and `minillava web` in a browser ([`web`])."""
