"""Stage 1, the documents: discovery (which files, decoded how), chunking along the Markdown
structure, and the language each is written in. Imports only ``datakeg.errors`` and ``support``."""
