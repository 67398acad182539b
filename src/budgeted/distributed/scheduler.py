"""What the Dask scheduler says: the cluster's workers, and a worker's seat."""

from __future__ import annotations

from collections.abc import Mapping

import distributed

from .seats import Seat, plan_seats

__all__ = ["scheduler_workers", "seat_from_scheduler"]


def scheduler_workers(client) -> dict[str, Mapping]:
    """Every worker of the cluster, as ``scheduler_info()["workers"]``.

    ``n_workers=-1`` is needed where ``scheduler_info()`` lists only five
    workers by default (distributed 2025.4 to 2026.6); older releases did not
    know the argument and list them all.
    """
    try:
        return client.scheduler_info(n_workers=-1)["workers"]
    except TypeError:
        return client.scheduler_info()["workers"]


def seat_from_scheduler(address: str) -> Seat:
    """Seat of a worker that joined after the call was planned."""
    client = distributed.get_client()
    return plan_seats(scheduler_workers(client))[address]
