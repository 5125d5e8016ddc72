"""mkdocs hook: a page that is only ``--8<-- "PATH"`` shows that file of the repository
(README.md, CHANGELOG.md, example_project/README.md), its links rewritten for the site, where
docs/ is the root."""

from __future__ import annotations

import functools
import posixpath
import re
from pathlib import Path
from typing import Any

INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$')
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(#[^)\s]*)?\)")
# Repository files shown as pages -> those pages.
PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md", "example_project/README.md": "example.md"}


def site_link(included: str, match: re.Match[str]) -> str:
    """A link of the file ``included``, as the site's pages (all in docs/) reach it."""
    path = posixpath.normpath(posixpath.join(posixpath.dirname(included), match.group(1)))
    path = path.removeprefix("docs/") if path.startswith("docs/") else PAGES.get(path, path)
    return f"]({path}{match.group(2) or ''})"


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    included = INCLUDE.match(markdown.strip())
    if included is None:
        return markdown
    path = included.group(1)
    text = (Path(config.config_file_path).parent / path).read_text()
    return LINK.sub(functools.partial(site_link, path), text)
