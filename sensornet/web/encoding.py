"""
How readings and sensors look on the wire: JSON objects and CSV rows.

One shape for a reading everywhere (the API, the CSV export and the live
stream), so a client parses one thing. Pure functions only.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, Mapping, Optional

from ..reading import Reading
from ..store.layout import fromMicroseconds, toMicroseconds

__all__ = [
    "CSV_COLUMNS",
    "isoTime",
    "jsonBytes",
    "neutraliseCSVText",
    "readingFromRow",
    "readingFromObject",
    "readingsCSV",
    "sensorFromRow",
]

#: The CSV export's columns, in order (its header line names them).
CSV_COLUMNS = ("sensor", "kind", "value", "unit", "ts", "time", "seq", "received_at", "peer", "dialect")


def isoTime(seconds: Optional[float]) -> Optional[str]:
    """
    Seconds since the epoch as ISO 8601 UTC with milliseconds
    (C{"2024-06-11T10:15:42.123Z"}), or L{None} for L{None}.
    """
    if seconds is None:
        return None
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def jsonBytes(value: Any) -> bytes:
    """
    C{value} as compact UTF-8 JSON (non-ASCII kept as is: sensor names and
    units such as C{"°C"} stay readable).
    """
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def readingFromRow(row: Mapping[str, Any]) -> Dict[str, Any]:
    """
    A reading as the store's query side returns it, in the API's shape.

    C{ts} is the reading's time (the sender's, else when it was received);
    C{time} is the same instant in ISO 8601.
    """
    receivedAt = _float(row.get("received_at"))
    ts = _float(row.get("ts"))
    if ts is None:
        ts = receivedAt
    seq = row.get("seq")
    return {
        "sensor": row["sensor"],
        "kind": row["kind"],
        "value": float(row["value"]),
        "unit": row.get("unit") or "",
        "ts": ts,
        "time": isoTime(ts),
        "seq": None if seq is None else int(seq),
        "received_at": receivedAt,
        "peer": row.get("peer") or "",
        "dialect": row.get("dialect") or "",
    }


def _asStored(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else fromMicroseconds(toMicroseconds(seconds))


def readingFromObject(reading: Reading) -> Dict[str, Any]:
    """
    A committed L{Reading} (from the live feed) in the API's shape, with its
    times as the store keeps them (to the microsecond): a client that has a
    reading from the stream and the same reading from C{/api/readings} sees
    one reading, not two a fraction of a microsecond apart.
    """
    row = {name: getattr(reading, name) for name in Reading.__slots__}
    row["ts"] = _asStored(reading.ts)
    row["received_at"] = _asStored(reading.received_at)
    return readingFromRow(row)


def sensorFromRow(row: Mapping[str, Any], connected: bool) -> Dict[str, Any]:
    """
    One entry of C{GET /api/sensors}: a stored series (sensor and kind) with
    its latest value and whether the sensor has a connection open now.
    """
    ts = _float(row.get("ts"))
    return {
        "sensor": row["sensor"],
        "kind": row["kind"],
        "unit": row.get("unit") or "",
        "value": _float(row.get("value")),
        "ts": ts,
        "time": isoTime(ts),
        "count": int(row.get("count") or 0),
        "first_seen": _float(row.get("first_seen")),
        "last_seen": _float(row.get("last_seen")),
        "connected": connected,
    }


def readingsCSV(readings: Iterable[Mapping[str, Any]]) -> bytes:
    """
    Readings (in the API's shape) as UTF-8 CSV with a header line and
    C{\\r\\n} line ends (RFC 4180); missing values are empty fields.

    Safe to open in a spreadsheet: a text field that a spreadsheet would
    take for a formula (see L{neutraliseCSVText}) is written with a leading
    apostrophe; numbers are written as numbers.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for reading in readings:
        writer.writerow(
            ["" if reading.get(column) is None else _csvField(reading[column]) for column in CSV_COLUMNS]
        )
    return out.getvalue().encode("utf-8")


def _csvField(value: Any) -> str:
    # repr() of a float round-trips exactly; str() of an int is what people expect.
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return neutraliseCSVText(value)
    return str(value)


#: What a spreadsheet takes for the start of a formula (OWASP, "CSV
#: Injection"): C{=}, C{+}, C{-}, C{@}, and a tab or carriage return before
#: any of them.
_FORMULA_STARTS = frozenset("=+-@\t\r")


def neutraliseCSVText(text: str) -> str:
    """
    C{text} as a CSV text cell a spreadsheet shows as text: when it starts
    with C{=}, C{+}, C{-}, C{@}, a tab or a carriage return (so
    C{=HYPERLINK(...)}, C{@SUM(A1)} or C{-1+2} would run as a formula), it
    gets a leading apostrophe, which spreadsheets take as "this is text" and
    do not display. Other text is unchanged. Only for text: numbers, negative
    ones included, are written as numbers by the caller.
    """
    if text and text[0] in _FORMULA_STARTS:
        return "'" + text
    return text
