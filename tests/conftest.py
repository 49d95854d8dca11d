"""Fixtures shared by all tests."""

from pathlib import Path

import pytest

#: The real models and data made outside this project (see its README.md); read-only.
FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The shared fixtures folder, ``../shared/fixtures`` from the project root."""
    if not FIXTURES.is_dir():
        pytest.fail(f"The shared fixtures are missing: expected them at {FIXTURES}.")
    return FIXTURES
