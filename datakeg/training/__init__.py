"""Fine-tuning on an OUT (torch or MLX) and export for Ollama. Reads datasets through
``dataset``; never imports ``generation`` or ``curation``. Heavy libraries load lazily."""
