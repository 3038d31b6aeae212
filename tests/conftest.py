"""
Shared pytest configuration.

pytest-twisted runs one global reactor for the whole session (started once,
never restarted). It has no C{reactor} fixture of its own, so this module
gives one; tests that need fake time or fake sockets use C{task.Clock},
C{StringTransport} or C{MemoryReactor} instead.
"""

import pytest

# Fixtures that live in their own modules, beside this file (this directory
# is on sys.path because pytest inserts a rootdir conftest's folder).
pytest_plugins = ["pgserver"]


@pytest.fixture
def reactor():
    """
    The real reactor pytest-twisted runs, for end-to-end tests over loopback.
    """
    from twisted.internet import reactor as _reactor

    return _reactor
