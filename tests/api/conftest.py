"""Fixtures of the API tests (defined in tests/utils/servicefixtures.py, shared with tests/worker)."""

from tests.utils.servicefixtures import *  # noqa: F401,F403
