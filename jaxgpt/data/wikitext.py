"""Wikitext to plain text, fast: a hand-written stripper for data.wiki_parser="fast".

mwparserfromhell builds a full tree of every page (0.2-0.7 MB/s); training text needs much less:
templates, tables, references, files, categories and interwiki links removed; links,
headings, lists and paragraphs kept as text. This does it with a few regular expressions and
ONE scan over the bracket tokens `{{ }}`, `{{{ }}}`, `[[ ]]`, and line-initial `{| |}`, with a
stack, so templates and tables nested to any depth go whole (mwparserfromhell, kept as
data.wiki_parser="mwparserfromhell", is the test oracle: same words on the fixture pages).

In order: comments go; tags whose content is not text (<ref>, <math>, <gallery>, ...) go with
their content; tags whose content is literal (<nowiki>, <pre>, <syntaxhighlight>, ...) are set
aside and put back last; <br> becomes a line break; the bracket scan; external links become
their label; bold/italic quotes, heading `=`, list markers, rules, `__MAGIC__` words and the
remaining HTML tags go; entities are decoded; whitespace is tidied.

Unbalanced markup (an unclosed `{{` or a stray `]]`) keeps the page: the lone token is
dropped, the text around it kept, and Stripped.unbalanced says so (counted as
wiki_unbalanced_markup). A page using a disambiguation template says so in
Stripped.disambiguation (skipped as wiki_disambiguation).
"""

from __future__ import annotations

import dataclasses
import html
import re

# Namespace names whose links are not text (English; a dump's own names are added from its
# <siteinfo>, see wiki.link_prefixes).
DROP_PREFIXES = frozenset({"file", "image", "media", "category"})
# Templates that mark a disambiguation page (exact names: "Disambiguation needed" is an inline
# cleanup tag used in articles).
DISAMBIGUATION = frozenset({
    "disambiguation", "disambig", "disamb", "dab", "hndis", "geodis", "numberdis", "mathdab",
    "set index article", "sia", "surname", "given name",
})  # fmt: skip
# Tags whose content is not running text.
DROPPED_TAGS = (
    "ref|references|math|gallery|timeline|graph|mapframe|maplink|score|templatestyles|"
    "imagemap|inputbox|categorytree|section|templatedata|includeonly|table"
)
# Tags whose content MediaWiki shows as is, without parsing it.
LITERAL_TAGS = "nowiki|pre|syntaxhighlight|source|chem|ce|hiero"
# HTML tags removed with their content kept.
HTML_TAGS = (
    "span|div|small|big|sup|sub|center|font|b|i|u|s|strike|del|ins|code|tt|kbd|var|abbr|cite|"
    "q|blockquote|poem|p|em|strong|dfn|samp|mark|bdi|bdo|ruby|rt|rp|rb|wbr|hr|li|ul|ol|dl|dt|"
    "dd|caption|noinclude|onlyinclude|h[1-6]|tr|td|th|tbody|thead"
)

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_DROPPED = re.compile(
    rf"<({DROPPED_TAGS})\b[^>]*?/>|<({DROPPED_TAGS})\b[^>]*>.*?</\2\s*>", re.S | re.I
)
_LITERAL = re.compile(rf"<({LITERAL_TAGS})\b[^>]*?(?:/>|>(.*?)</\1\s*>)", re.S | re.I)
_SET_ASIDE = re.compile(r"\x01(\d+)\x02")
_BR = re.compile(r"<br\s*/?\s*>|</br\s*>", re.I)
_TOKEN = re.compile(r"\{\{\{|\}\}\}|\{\{|\}\}|\[\[|\]\]|^[ \t]*\{\||^[ \t]*\|\}", re.M)
_SIMPLE_LINK = re.compile(r"\[\[([^\[\]{}]*)\]\]")
_EXTERNAL = re.compile(
    r"\[(?:(?:https?|ftps?|sftp|irc|ircs|gopher|nntp|telnet|git|svn|ssh|mms):)?//[^\s\]]*"
    r"(?:[ \t]+([^\]\n]*))?\]|\[(?:mailto|news):[^\s\]]*(?:[ \t]+([^\]\n]*))?\]",
    re.I,
)
_QUOTES = re.compile(r"''+")
_HEADING = re.compile(r"^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.M)
_LIST = re.compile(r"^[*#:;]+[ \t]*", re.M)
_RULE = re.compile(r"^-{4,}[ \t]*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_HTML = re.compile(rf"</?(?:{HTML_TAGS})\b[^<>]*>", re.I)
_LANGUAGE_LINK = re.compile(r"[a-z]{2,3}(-[a-z]+)*:")
_BLANK_LINES = re.compile(r"\n{3,}")
OPENERS = {"{{": "}}", "{{{": "}}}", "[[": "]]", "{|": "|}"}


@dataclasses.dataclass(frozen=True)
class Stripped:
    text: str
    disambiguation: bool = False  # a disambiguation template was seen
    unbalanced: bool = False  # an unclosed or stray bracket token was dropped


def plain_text(wikitext: str, drop_prefixes: frozenset[str] = DROP_PREFIXES) -> Stripped:
    """The plain text of a page's wikitext (see the module docstring for what goes)."""
    text = _COMMENT.sub("", wikitext) if "<!--" in wikitext else wikitext
    aside: list[str] = []
    if "<" in text:
        text = _DROPPED.sub("", text)
        text = _LITERAL.sub(lambda m: _set_aside(aside, m.group(2) or ""), text)
        text = _BR.sub("\n", text)
    if "[[" in text:  # links without brackets inside: resolved at once, fewer scan tokens
        text = _SIMPLE_LINK.sub(lambda m: link_text(m.group(1), drop_prefixes), text)
    scan = _Scan(text, drop_prefixes)
    text = scan.run()
    if "[" in text:
        text = _EXTERNAL.sub(lambda m: m.group(1) or m.group(2) or "", text)
    text = _QUOTES.sub("", text)
    if "=" in text:
        text = _HEADING.sub(r"\2", text)
    text = _RULE.sub("", _LIST.sub("", text))
    if "__" in text:
        text = _MAGIC.sub("", text)
    if "<" in text:
        text = _HTML.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    if aside:
        text = _SET_ASIDE.sub(lambda m: aside[int(m.group(1))], text)
    return Stripped(tidy(text), scan.disambiguation, scan.unbalanced)


def tidy(text: str) -> str:
    """Lines stripped, runs of blank lines made one, the whole stripped (as the oracle's)."""
    lines = "\n".join(line.strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", lines).strip()


def _set_aside(aside: list[str], content: str) -> str:
    aside.append(content)
    return f"\x01{len(aside) - 1}\x02"


def is_disambiguation(name: str) -> bool:
    """Whether a template name ("Disambiguation", "Template:dab", "set_index_article")
    marks a disambiguation page."""
    name = name.strip().replace("_", " ").lower()
    if name.startswith("template:"):
        name = name[len("template:") :].strip()
    return " ".join(name.split()) in DISAMBIGUATION


class _Scan:
    """One pass over the bracket tokens: templates and tables dropped, links resolved."""

    def __init__(self, text: str, drop_prefixes: frozenset[str]):
        self.text, self.drop_prefixes = text, drop_prefixes
        self.out: list[str] = []
        self.stack: list[tuple[str, int]] = []  # (opener, len(out) when opened)
        self.disambiguation = self.unbalanced = False

    def run(self) -> str:
        text, pos = self.text, 0
        while (m := _TOKEN.search(text, pos)) is not None:
            self.out.append(text[pos : m.start()])
            token, pos = m.group().strip(" \t"), m.end()
            if token == "|}" and not self._top("{|"):
                # Not a table's end: a "|" then the "}}" of a template ("|}}").
                self.out.append(text[m.start() : m.end() - 1])
                pos = m.end() - 1
            elif token == "}}}" and not self._top("{{{"):
                self._close("}}")  # "{{a|{{b}}}}": two template ends, not a parameter's
                pos = m.end() - 1
            elif token in OPENERS:
                self.out.append(text[m.start() : m.end() - len(token)])  # the line's indent
                self.stack.append((token, len(self.out)))
            else:
                self._close(token)
        self.out.append(text[pos:])
        if self.stack:  # unclosed openers: their tokens are dropped, their text kept
            self.unbalanced = True
        return "".join(self.out)

    def _top(self, opener: str) -> bool:
        return bool(self.stack) and self.stack[-1][0] == opener

    def _close(self, token: str) -> None:
        for depth in range(len(self.stack) - 1, -1, -1):
            if OPENERS[self.stack[depth][0]] == token:
                break
        else:  # a closer with no opener: dropped
            self.unbalanced = True
            return
        if depth != len(self.stack) - 1:  # openers left open inside it: they go with it
            self.unbalanced = True
            del self.stack[depth + 1 :]
        opener, mark = self.stack.pop()
        inner = "".join(self.out[mark:])
        del self.out[mark:]
        if opener == "{{" and not self.disambiguation:
            self.disambiguation = is_disambiguation(inner.partition("|")[0])
        elif opener == "[[":
            self.out.append(link_text(inner, self.drop_prefixes))


def link_text(inner: str, drop_prefixes: frozenset[str]) -> str:
    """A wikilink's text: [[a|b]] -> b, [[a]] -> a, files/categories/interwiki -> ""."""
    title, pipe, label = inner.partition("|")
    title = title.strip()
    if title.startswith(":"):  # [[:Category:X]] links to the page instead of tagging
        title = title[1:].lstrip()
    elif ":" in title:
        prefix = title.partition(":")[0].strip().lower()
        if prefix in drop_prefixes:
            return ""
        if not pipe and _LANGUAGE_LINK.match(title):
            return ""
    return label if pipe else title
