"""
The package type-checks: mypy (with the zope.interface plugin Twisted's
interfaces need) reports nothing on sensornet/.
"""

import os
import subprocess
import sys

import pytest


@pytest.mark.timeout(300)
def test_mypy_is_clean_on_the_package():
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", os.path.join(checkout, "setup.cfg"),
         os.path.join(checkout, "sensornet")],
        capture_output=True, text=True, cwd=checkout, timeout=280,
    )
    assert result.returncode == 0, result.stdout + result.stderr
