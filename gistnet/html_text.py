"""The text of an HTML page, as a reader of its content sees it.

A documentation page carries, besides its content, the site around it: menus, breadcrumbs,
a sidebar of links, a search box, a footer, scripts and styles. A model trained on the
page's text should see the content only, so the elements that hold the rest are dropped
whole: by tag (`nav`, `header`, `footer`, `aside`, `script`, `style`, ...), by ARIA role
(`navigation`, `banner`, `contentinfo`, `complementary`, `search`) and by the class names
Sphinx and most site themes give them (`sphinxsidebar`, `related`, `footer`, ...).

What is left is the page's text with its block structure: a line break between blocks
(paragraphs, headings, list items, table rows), runs of spaces collapsed elsewhere, and
`<pre>` kept as written, so code keeps its indentation.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["page_text"]

# Elements whose whole content is not the page's text.
SKIPPED_TAGS = frozenset(
    {
        "aside", "button", "footer", "form", "head", "header", "iframe", "nav", "noscript",
        "script", "select", "style", "svg", "template", "textarea",
    }
)  # fmt: skip
SKIPPED_ROLES = frozenset({"banner", "complementary", "contentinfo", "navigation", "search"})
SKIPPED_CLASSES = frozenset(
    {
        "footer", "header", "headerlink", "menu", "mobile-nav", "navigation", "related",
        "sidebar", "sphinxsidebar", "toc", "breadcrumbs",
    }
)  # fmt: skip
# Elements that never have an end tag: they open nothing to close.
VOID_TAGS = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr",
    }
)  # fmt: skip
# Elements that start a new line of text.
BLOCK_TAGS = frozenset(
    {
        "address", "article", "blockquote", "br", "caption", "dd", "div", "dl", "dt",
        "figcaption", "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol",
        "p", "pre", "section", "table", "td", "th", "tr", "ul",
    }
)  # fmt: skip
_SPACES = re.compile(r"\s+")


def _skipped(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
    if tag in SKIPPED_TAGS:
        return True
    values = dict(attrs)
    if (values.get("role") or "").strip().lower() in SKIPPED_ROLES:
        return True
    return not SKIPPED_CLASSES.isdisjoint((values.get("class") or "").lower().split())


class _PageText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        # Open elements, each with whether it (or an element around it) is skipped.
        self.open: list[tuple[str, bool]] = []
        self.pieces: list[str] = []
        self.pre_depth = 0
        self.line_start = True  # nothing written on the current line yet

    def newline(self) -> None:
        self.pieces.append("\n")
        self.line_start = True

    @property
    def skipping(self) -> bool:
        return bool(self.open) and self.open[-1][1]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCK_TAGS:
            self.newline()
        if tag in VOID_TAGS:
            return
        self.open.append((tag, self.skipping or _skipped(tag, attrs)))
        if tag == "pre":
            self.pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in BLOCK_TAGS:
            self.newline()

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching element; an end tag that matches none is ignored, as
        # browsers do with stray ones.
        if not any(name == tag for name, _ in self.open):
            return
        while self.open:
            name, _ = self.open.pop()
            if name == "pre":
                self.pre_depth -= 1
            if name == tag:
                break
        if tag in BLOCK_TAGS:
            self.newline()

    def handle_data(self, data: str) -> None:
        if self.skipping or not data:
            return
        if self.pre_depth:  # as written: code keeps its indentation and line breaks
            self.pieces.append(data)
            self.line_start = data.endswith("\n")
            return
        text = _SPACES.sub(" ", data)
        if self.line_start:  # the markup's own line breaks and indentation, not the text's
            text = text.lstrip()
        if text:
            self.pieces.append(text)
            self.line_start = False

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self.pieces).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def page_text(markup: str) -> str:
    """The content text of one HTML page (`markup`), without its navigation, scripts and
    styles: one document."""
    parser = _PageText()
    parser.feed(markup)
    parser.close()
    return parser.text()
