import os
from pathlib import Path

import pytest

from mmue_lib.notebooks import measured_hours
from mmue_lib.storage import data_root


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep every test's decoded images and runs out of the user's cache. Parallel workers
    (pytest-xdist) share one cache, as two notebooks on one machine do: a run one worker asks for
    while another computes it waits for it (`cache.cached`), so the smoke notebooks share Table 1's runs."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    folder = shared / "mmue-cache"
    folder.mkdir(exist_ok=True)
    os.environ["MMUE_CACHE"] = str(folder)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not (root / "flickr8k" / "test.csv").is_file():
        pytest.skip(f"real data not found at {root} (set MMUE_DATA to the folder holding flickr8k/ and faces20/)")
    return root


def pytest_collection_modifyitems(items):
    """Longest first, so that parallel workers (`make test`) finish together: the slow tests (the
    longest single items: a 6-round protection, torchrun pairs), then the smoke notebooks by their
    measured cost (`params/smoke/run_hours.yaml`), then the rest."""
    hours = measured_hours("smoke")

    def cost(item) -> float:
        if item.get_closest_marker("slow"):
            return 2.0
        if item.get_closest_marker("notebook"):
            return 1.0 + hours.get(item.callspec.params["name"], 0.0)
        return 0.0

    items.sort(key=cost, reverse=True)
