import pytest


@pytest.fixture(scope="session", autouse=True)
def _lab_unless_hosts_given(request):
    """The lab is started only when no --hosts were given: with them, these
    checks audit those (real) hosts and touch no lab."""
    if request.config.option.hosts is None:
        request.getfixturevalue("deployed_lab")
