"""The integration tier trains and evaluates tiny models in this process: all of it on one thread
(``one_thread``; tests/conftest.py says why). A quickstart run on two threads took many times
longer on a busy 2-core machine than on one."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every integration test on one thread, its module's runs (module fixtures) included: an
    autouse module fixture is set up before the module's other ones."""
