"""Stage 3, what is kept: quality gates (dedupe, grounding, junk), the 3-way leakage audit
(fuzzy and TF-IDF), semantic dedupe, coverage, ``validate`` and the ``audit`` command's work on an OUT.
Imports ``dataset``, ``sources`` and ``support``; never ``generation``, ``training`` or the CLI."""
