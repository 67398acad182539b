"""Sphinx configuration for budgeted's documentation.

Built with warnings as errors: ``sphinx-build -W --keep-going -b html docs
docs/_build/html`` (``tox -e docs``). ``tests/test_docs.py`` builds it the
same way and runs every ``.. code-block:: python`` of every page.
"""

from __future__ import annotations

import budgeted

project = "budgeted"
author = "the budgeted developers"
copyright = "2026, the budgeted developers"
release = budgeted.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]

# Stub pages are not generated: api.rst documents every object itself and
# the autosummary tables link to those entries.
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # numpydoc's Parameters sections already say it
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

exclude_patterns = ["_build"]
templates_path: list[str] = []
default_role = "py:obj"
nitpicky = False

html_theme = "furo"
html_title = f"budgeted {release}"
html_static_path: list[str] = []
