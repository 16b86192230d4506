import pytest


@pytest.fixture(scope="session", autouse=True)
def _lab(deployed_lab):
    """Every end-to-end test runs against the one deployed lab."""
    return deployed_lab
