"""Reading model replies: the first JSON object in a reply, wherever the model put it.

In: a reply's text (bare JSON, JSON in a ``` fence, or JSON with chatter around it). Out: the first
`{...}` that parses as a JSON object, or None. Every parser of a structured answer (critic experts,
profile consistency, evaluation judges) starts here and falls back to its own reading of free text.
"""

from __future__ import annotations

import json
import re
from typing import Any

_DECODER = json.JSONDecoder()


def json_object(text: str) -> dict[str, Any] | None:
    for match in re.finditer(r"\{", text):
        try:
            value, _ = _DECODER.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None
