"""Sphinx configuration of the pgpubsub-dispatch documentation.

Build it with ``python -m sphinx -W --keep-going -b html docs docs/_build/html`` (after
``pip install -e '.[docs]'``); ``tests/test_docs.py`` runs that build with warnings as errors.
Everything needed is local: no extension fetches anything from the network.
"""

from __future__ import annotations

import pgpubsub_dispatch

project = "pgpubsub-dispatch"
author = "pgpubsub-dispatch contributors"
copyright = "the pgpubsub-dispatch contributors"
release = pgpubsub_dispatch.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the "Attributes:" sections of Notification and DispatcherStats
    "sphinxarg.ext",  # the command line's reference, from cli.build_parser()
]

exclude_patterns = ["_build"]
root_doc = "index"

# The docstrings use reST fields (:param x:, :raises X:); napoleon reads the few Google-style
# "Attributes:" sections, as :ivar: fields so they do not repeat the properties' own entries.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"pgpubsub-dispatch {release}"
