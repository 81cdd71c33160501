"""``datakeg review OUT``: a local web page to review every pair beside its source and correct it.

:mod:`datakeg.review.model` holds the pairs, filters and decisions (no web framework);
:mod:`datakeg.review.server` serves it with Starlette + uvicorn (the ``[review]`` extra) and the
page in ``static/`` (plain HTML, CSS and JavaScript shipped with the package: no CDN).
"""
