"""Sphinx configuration of the course site: ``make site`` builds it into build/site/.

The chapters are the notebooks themselves (``docs/notebooks`` links to ``../notebooks``), shown
with the outputs stored in them: nothing is executed (``nb_execution_mode = "off"``) and nothing
is fetched at build time (no intersphinx, no remote images, no widget JavaScript from a CDN).
The API reference is generated from the docstrings of every public ``qlearn`` module, so a new
chapter's notebook and module appear without editing this file.
"""

from __future__ import annotations

import ast
import re
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports qlearn from this checkout

project = "qlearn"
author = "qlearn contributors"
copyright = "qlearn contributors, Apache-2.0"
release = version = re.search(
    r'__version__ = "([^"]+)"', (ROOT / "qlearn" / "__init__.py").read_text()
).group(1)

extensions = ["myst_nb", "sphinx.ext.autodoc"]
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "notebooks/sanitize.cfg"]

# Offline: stored outputs only, no network.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # myst-nb would load require.js and the widget manager from CDNs
nb_merge_streams = True
intersphinx_mapping = {}
intersphinx_disabled_reftypes = ["*"]
myst_enable_extensions = ["dollarmath", "amsmath"]
suppress_warnings = ["mystnb.unknown_mime_type"]  # widget views: stored without their state

# API reference from the docstrings.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
autodoc_typehints = "signature"
python_use_unqualified_type_names = True
add_module_names = False

html_theme = "sphinx_book_theme"
html_title = "qlearn: LLM weight quantization, hands on"
html_theme_options = {
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
}
html_last_updated_fmt = None
html_static_path = ["_static"]
html_css_files = ["qlearn.css"]

API_PAGE = "api"
API_MARKER = ".. qlearn-modules (replaced by one section per public module when the site is built)"


def setup(app):
    _forbid_network()
    app.connect("source-read", _api_reference)
    app.connect("autodoc-process-docstring", _plain_bars)
    app.connect("build-finished", _report_network)
    return {"parallel_read_safe": True}


NETWORK_ATTEMPTS: list[str] = []


def _forbid_network() -> None:
    """Refuse every connection and name lookup in this build, and remember who tried: the site
    must build offline. A refusal surfaces as the caller's own error, and as a warning at the
    end of the build ("network access attempted"), which tests/test_site.py looks for."""

    def refuse(what: str):
        def refused(*args, **kwargs):
            target = args[1] if what == "connect" else args[0]  # connect: (socket, address)
            NETWORK_ATTEMPTS.append(f"{what} {target!r}")
            raise OSError(f"the qlearn site builds offline: refused {what} to {target!r}")

        return refused

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect")
    socket.getaddrinfo = refuse("getaddrinfo")
    socket.create_connection = refuse("create_connection")


def _report_network(app, exception) -> None:
    from sphinx.util import logging

    for attempt in NETWORK_ATTEMPTS:
        logging.getLogger(__name__).warning(f"network access attempted: {attempt}")


def _api_reference(app, docname: str, source: list[str]) -> None:
    """Expand the marker on the API page into one automodule section per public module."""
    if docname != API_PAGE or API_MARKER not in source[0]:
        return
    sections = []
    for name in public_modules():
        title = f"``qlearn.{name}``"
        sections.append(f"{title}\n{'-' * len(title)}\n\n.. automodule:: qlearn.{name}\n")
    source[0] = source[0].replace(API_MARKER, "\n".join(sections))


def _plain_bars(app, what, name, obj, options, lines: list[str]) -> None:
    """The docstrings write |x| for a magnitude; reStructuredText would read a substitution.
    Escape every bar outside ``literals``."""
    for i, line in enumerate(lines):
        lines[i] = _BAR.sub(lambda m: m.group(1) or r"\|", line)


_BAR = re.compile(r"(``.*?``)|\|")


def public_modules() -> list[str]:
    """The name of every public qlearn module, in course order.

    The order of the list in ``qlearn/__init__.py``'s docstring; modules it does not list yet
    follow, by the chapter their docstring says teaches them ("Taught in notebooks/NN_..."),
    then by name. Read with ``ast``: nothing is imported to build the list.
    """
    package = ROOT / "qlearn"
    listed = re.findall(
        r":mod:`qlearn\.(\w+)`",
        ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or "",
    )
    modules = []
    sources = [*package.glob("[!_]*.py"), *package.glob("[!_]*/__init__.py")]
    for path in sorted(sources):
        source = path.read_text(encoding="utf-8")
        if path.name == "__init__.py":  # a package (qlearn.gguf, qlearn.exercises)
            path = path.parent
        doc = ast.get_docstring(ast.parse(source)) or ""
        chapter = re.search(r"notebooks/(\d\d)_", doc)
        order = (
            (0, listed.index(path.stem), "")
            if path.stem in listed
            else (1, int(chapter.group(1)) if chapter else 99, path.stem)
        )
        modules.append((order, path.stem))
    return [name for _, name in sorted(modules)]
