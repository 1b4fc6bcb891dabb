"""A griffe extension for `make docs`: render the Sphinx markup the docstrings use.

The docstrings are Google style, as the style guide asks, with two bits of Sphinx markup
that Markdown shows literally: cross-reference roles (``:class:`Run```) and
``.. versionadded:: 0.1``. This rewrites them when griffe loads each object, so the API
reference shows ``Run`` as code and "Added in version 0.1." as a note.
"""

# ruff: noqa: INP001 - a file mkdocs loads by path, not a package
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|data|mod|exc|obj|const):`[~!]?([^`]+)`")
_VERSION = re.compile(
    r"^(?P<indent>[ \t]*)\.\. version(?P<kind>added|changed|deprecated)::[ \t]*(?P<version>\S+)"
    r"[ \t]*(?P<text>.*)$",
    re.MULTILINE,
)
_WORDS = {"added": "Added", "changed": "Changed", "deprecated": "Deprecated"}


def _version_note(match: re.Match[str]) -> str:
    note = f"*{_WORDS[match['kind']]} in version {match['version']}.*"
    text = match["text"].strip()
    return f"{match['indent']}{note} {text}".rstrip()


def rewrite(text: str) -> str:
    """``text`` with roles as inline code and version directives as italic notes."""
    return _VERSION.sub(_version_note, _ROLE.sub(r"`\1`", text))


class SphinxMarkup(griffe.Extension):
    """Rewrite each loaded object's docstring with :func:`rewrite`."""

    def _fix(self, obj: griffe.Object | griffe.Alias) -> None:
        docstring = obj.docstring
        if docstring is not None and not isinstance(obj, griffe.Alias):
            docstring.value = rewrite(docstring.value)

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Each object as it is created."""
        del kwargs
        self._fix(obj)
