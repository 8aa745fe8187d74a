"""Fixtures shared by several test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def cu13():
    """A 13-atom Cu icosahedron relaxed with EMT (``md_setup.relaxed_cu13``); do not modify."""
    from md_setup import relaxed_cu13

    return relaxed_cu13()
