"""The configuration reference of docs/operations.md is the options table (one source): this
fails when an option changes and the doc does not, and shows the table to paste."""

from __future__ import annotations

import re
from pathlib import Path

from mqttd.options import reference_markdown

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def test_operations_md_holds_the_generated_reference() -> None:
    text = DOC.read_text()
    m = re.search(r"<!-- options:begin -->\n(.*?)<!-- options:end -->", text, re.S)
    assert m, "docs/operations.md has no <!-- options:begin/end --> markers"
    want = reference_markdown()
    assert m.group(1) == want, "docs/operations.md's reference is out of date; paste:\n" + want
