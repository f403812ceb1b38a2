"""MkDocs hooks for aioiam's documentation site (``hooks:`` in mkdocs.yml).

The docstrings use Sphinx roles (``:class:`~aioiam.TokenManager```), which mkdocstrings renders
as they are (``:class:`` followed by a code span). This turns each into the code span alone, and
makes a reference to a public ``aioiam`` name a link to its entry in the API reference (through
mkdocs-autorefs; a name the reference does not document stays plain code, without a warning).
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:class|meth|attr|func|data|exc|mod|obj):<code>(?P<target>~?[\w.]+)</code>")


def _replace(match: re.Match[str]) -> str:
    target = match["target"]
    short = target.startswith("~")
    path = target.lstrip("~")
    shown = path.rsplit(".", 1)[-1] if short else path
    if path.startswith("aioiam."):
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'
    return f"<code>{shown}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Sphinx roles left in rendered docstrings become code spans, and links where they can."""
    return ROLE.sub(_replace, html)
