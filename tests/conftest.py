"""Shared test set-up: one torch thread (tiny models; fast and repeatable on a 2-core machine), fixed seeds."""

import os
import random
import tempfile

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
# the run history (a SQLite file) goes to a fresh folder, never the user's ~/.local/share/clipviz; servers
# started by the browser tests inherit it (tests that need their own pass CLIPVIZ_DATA_DIR explicitly)
os.environ["CLIPVIZ_DATA_DIR"] = tempfile.mkdtemp(prefix="clipviz-test-data-")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _warm_worker_pool():
    """Jobs train in worker processes (clipviz.executors); start that pool once, before the first test, and
    wait for it: each worker imports torch (seconds on 2 busy cores), which no test's deadline should pay."""
    from clipviz.jobs import warm_up

    warm_up(wait=120.0)
    yield


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One `streamlit run app.py` for every browser test of the session (tests that restart one start their own)."""
    from tests import browser_util as bu

    with bu.streamlit_server(tmp_path_factory.mktemp("server") / "streamlit.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session; each test opens its own context (a new browser profile)."""
    from tests import browser_util as bu

    with bu.chromium() as br:
        yield br
