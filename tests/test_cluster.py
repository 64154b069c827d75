"""The Ray cluster checks a study makes before it writes anything (xattn/tuning/cluster.py)."""

import pytest
from services import free_port

from xattn.errors import StoreError
from xattn.tuning.cluster import check_ray_address, check_trial_fits, tcp_unreachable

MACHINE = {"CPU": 2.0, "memory": 1e10}


@pytest.mark.parametrize("cpus, gpus", [(2, 0), (0.5, 0)])
def test_a_trial_that_fits_passes(cpus, gpus):
    check_trial_fits(cpus, gpus, MACHINE, None)


@pytest.mark.parametrize(
    "cpus, gpus, expected",
    [
        (3, 0, "resources.cpus 3 per trial, but this machine has 2 CPUs: lower resources.cpus"),
        (1, 0.25, "resources.gpus 0.25 per trial, but this machine has 0 GPUs: set resources.gpus: 0 to train on CPU"),
    ],
)
def test_a_trial_larger_than_the_machine_says_what_to_lower(cpus, gpus, expected):
    with pytest.raises(StoreError) as raised:
        check_trial_fits(cpus, gpus, MACHINE, None)
    assert str(raised.value) == expected


def test_a_cluster_with_too_few_gpus_is_named():
    with pytest.raises(StoreError, match=r"the Ray cluster at head:6379 has 1 GPUs: lower resources.gpus"):
        check_trial_fits(1, 2, {**MACHINE, "GPU": 1.0}, "head:6379")


def test_an_address_nothing_listens_at_is_refused_and_local_ray_is_not_probed():
    port = free_port()
    with pytest.raises(
        StoreError, match=rf"cannot reach the Ray cluster at ray://127.0.0.1:{port} \(Connection refused\)"
    ):
        check_ray_address(f"ray://127.0.0.1:{port}")
    for address in (None, "auto", "local"):
        check_ray_address(address)
    assert tcp_unreachable("head") == "'head' is not HOST:PORT"
