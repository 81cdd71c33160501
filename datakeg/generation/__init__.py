"""Stage 2, asking the model: targets and planning, prompts, parsing, request calls with the
journal and budget, rounds per chunk and split, the judge, paraphrases, the run manifest and
the ``Generator`` pipeline. May import ``curation``, ``dataset``, ``sources``, ``providers``,
``settings``; never ``training``, ``evaluation``, ``api`` or the CLI. It never prints."""
