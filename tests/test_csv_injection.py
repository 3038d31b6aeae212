"""
The CSV export is safe to open in a spreadsheet: text that would run as a
formula is neutralised (OWASP's rule), numbers stay numbers.
"""

from __future__ import annotations

import csv
import io

import pytest

from sensornet.web.encoding import neutraliseCSVText, readingsCSV

HOSTILE = ["=HYPERLINK(\"http://evil.example\",\"x\")", "=1+2", "@SUM(A1)", "+1", "-1+2", "\tx", "\r=1"]


@pytest.mark.parametrize("text", HOSTILE)
def test_text_a_spreadsheet_would_run_gets_a_leading_apostrophe(text: str) -> None:
    """
    A cell starting with =, +, -, @, tab or CR is written with a leading
    apostrophe, and otherwise unchanged.
    """
    assert neutraliseCSVText(text) == "'" + text


@pytest.mark.parametrize("text", ["greenhouse-1", "Sensor1", "°C", "", "a=b", "x@y", "127.0.0.1:5000", "[::1]:4000"])
def test_ordinary_text_is_unchanged(text: str) -> None:
    """
    Only the first character matters: names with =, @ or - inside stay as
    they are.
    """
    assert neutraliseCSVText(text) == text


def test_export_neutralises_every_text_column_and_keeps_numbers_numeric() -> None:
    """
    Through the export itself: hostile sensor, kind, unit and peer come out
    neutralised; a negative value, seq and times stay plain numbers.
    """
    reading = {
        "sensor": "=HYPERLINK(\"http://evil.example\")", "kind": "@SUM(A1)", "value": -12.5, "unit": "+C",
        "ts": 1718100942.5, "time": "2024-06-11T10:15:42.500Z", "seq": 7, "received_at": 1718100943.0,
        "peer": "-1+2", "dialect": "native",
    }
    rows = list(csv.DictReader(io.StringIO(readingsCSV([reading]).decode("utf-8"))))
    assert rows == [{
        "sensor": "'=HYPERLINK(\"http://evil.example\")", "kind": "'@SUM(A1)", "value": "-12.5", "unit": "'+C",
        "ts": "1718100942.5", "time": "2024-06-11T10:15:42.500Z", "seq": "7", "received_at": "1718100943.0",
        "peer": "'-1+2", "dialect": "native",
    }]
