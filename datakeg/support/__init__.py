"""Helpers every stage may use: secret scrubbing, the cache directory and quiet third-party
libraries, chat-template rendering. Imports nothing from datakeg but ``datakeg.errors``."""
