import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.deploy.manifests import all_cases, render


@pytest.fixture(scope="session", autouse=True)
def _rendered() -> None:
    """Every overlay and component set rendered at once, up front (the renders are
    subprocesses: they overlap)."""
    if shutil.which("kubectl") is None:
        return
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda case: render(*case), all_cases()))
