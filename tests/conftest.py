import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep generated datasets of the test session out of the user's cache folder."""
    old = os.environ.get("NORMLAB_CACHE")
    os.environ["NORMLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("NORMLAB_CACHE", None)
    else:
        os.environ["NORMLAB_CACHE"] = old
