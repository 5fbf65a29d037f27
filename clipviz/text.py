"""User-supplied text made safe to show: shortened, and escaped for Streamlit markdown.

Every string a browser, a link, a file or a flag can choose (a bad URL value, a CSV column name, a cell)
goes through `shorten` before it is put in a message, and through `md_escape` (or `quote`) before it is
rendered as markdown: a value like `![x](http://host/p.png)` must show as text, never fetch an image or
become a link. No streamlit here: the CLI shortens its error lines with the same function.
"""

from __future__ import annotations

import re
import stat

MAX_SHOWN = 80  # characters of one user-supplied value shown in a message
MAX_LINE = 300  # characters of one error line (CLI stderr, a banner)

# every character markdown (CommonMark + GFM + Streamlit's extras) may treat as syntax
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$=^\"'&])")


def shorten(text: object, limit: int = MAX_SHOWN) -> str:
    """str(text) on one line, cut to `limit` characters with a note of how much was left out."""
    s = " ".join(str(text).split()) if any(c in str(text) for c in "\r\n\t\v\f") else str(text)
    s = "".join(c if c.isprintable() else "?" for c in s)  # control characters would garble a terminal
    if len(s) <= limit:
        return s
    return f"{s[: max(limit - 20, 1)]}… ({len(s):,} characters)"


def quote(text: object, limit: int = MAX_SHOWN) -> str:
    """A user value shortened and quoted for a plain-text message: 'abc'."""
    return repr(shorten(text, limit))


ZWSP = "\u200b"  # zero-width space: invisible, and it breaks GFM's autolink literals
_AUTOLINK = re.compile(r"(?i)(https?|ftp|mailto)(?=\\?:)|(www)(?=\\?\.)|(?=@)")


def md_escape(text: object, limit: int = MAX_LINE) -> str:
    """Shortened and backslash-escaped so Streamlit's markdown shows it literally (no links, images, html).

    Backslash escapes do not stop GFM's autolink literals (`http://host/p`, `www.x.y`, `a@b.c` become
    links even when their punctuation is escaped, measured in Chromium), so a zero-width space goes after
    each scheme name and `www`, and before each `@`: the text reads the same and no link is made.
    """
    escaped = _MD_SPECIAL.sub(r"\\\1", shorten(text, limit))
    return _AUTOLINK.sub(lambda m: (m.group(0) or "") + ZWSP, escaped)


def path_kind(st_mode: int) -> str | None:
    """What a non-regular file is, in words, from os.stat().st_mode (None for a regular file)."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(st_mode):
            return name
    return None if stat.S_ISREG(st_mode) else "not a regular file"
