"""Measuring a model on a test split (``datakeg eval``): answers, scores, the report.
May import ``generation`` (parsing), ``dataset`` and ``providers``; never ``training`` or the CLI."""
