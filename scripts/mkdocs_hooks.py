"""mkdocs hook: a page that is only ``--8<-- "PATH"`` shows that file of the repository
(README.md, CHANGELOG.md, example_project/README.md), its links rewritten for the site, where
docs/ is the root."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$')
LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)(#[^)\s]*)?\)")
# Repository files shown as pages -> those pages.
PAGES = {"README.md": "index.md", "CHANGELOG.md": "changelog.md", "example_project/README.md": "example.md"}


def site_link(match: re.Match[str]) -> str:
    path, anchor = match.group(1), match.group(2) or ""
    path = path.removeprefix("docs/") if path.startswith("docs/") else PAGES.get(path, path)
    return f"]({path}{anchor})"


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    included = INCLUDE.match(markdown.strip())
    if included is None:
        return markdown
    text = (Path(config.config_file_path).parent / included.group(1)).read_text()
    return LINK.sub(site_link, text)
