import os
from pathlib import Path

import pytest

from mmue_lib.storage import data_root


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep every test's decoded images and runs out of the user's cache."""
    os.environ["MMUE_CACHE"] = str(tmp_path_factory.mktemp("mmue-cache"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "flickr8k" / "test.csv").is_file():
        pytest.skip(f"real data not found at {root} (set MMUE_DATA to the folder holding flickr8k/ and faces20/)")
    return root
