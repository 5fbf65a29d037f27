"""Shared test set-up: one torch thread (tiny models; fast and repeatable on a 2-core machine), fixed seeds."""

import random

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


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
