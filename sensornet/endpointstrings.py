"""
Endpoint strings (C{tcp:5000:interface=127.0.0.1}, C{ssl:...}) read the way
Twisted's C{serverFromString} and C{clientFromString} read them, for the
places that must know what an endpoint will be before it exists: the demo's
dashboard URL, whether a listener faces other hosts, a client's TLS options.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

__all__ = ["endpointArguments"]


def endpointArguments(description: str) -> Tuple[List[str], Dict[str, str]]:
    """
    Split an endpoint string as Twisted does: arguments separated by C{:},
    C{key=value} for keywords, C{\\} escaping the next character. Pure.
    """
    positional: List[str] = []
    keywords: Dict[str, str] = {}
    key = None
    current: List[str] = []
    escaped = False
    for character in description:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            if key is None:
                positional.append("".join(current))
            else:
                keywords[key] = "".join(current)
            key, current = None, []
        elif character == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(character)
    if key is None:
        positional.append("".join(current))
    else:
        keywords[key] = "".join(current)
    return positional, keywords
