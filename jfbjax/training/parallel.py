"""Data parallelism over the local devices with ``jax.sharding``.

A one-dimensional :class:`~jax.sharding.Mesh` over ``jax.devices()`` with the
axis ``"data"``: batches are split along their leading axis across the
devices (``P("data")``); parameters, optimiser state and metrics are
replicated (``P()``). The jitted steps take these shardings as their
``in_shardings`` / ``out_shardings``; inside, ``jax.shard_map`` runs the
model on each device's rows and ``lax.pmean`` averages the gradients.

Multi-host: call ``jax.distributed.initialize()`` on every host before
anything else touches JAX; ``jax.devices()`` then spans all hosts, each host
computes the same global batch (the data pipeline is a pure function of the
step) and contributes the rows that belong to its own devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DataParallel"]


@dataclasses.dataclass(frozen=True, eq=False)
class DataParallel:
    """A data-parallel layout: a one-axis mesh ``("data",)`` over the devices.

    Build it with :meth:`create`. Batches are placed with their leading axis
    split over the devices (:attr:`batch`, :meth:`shard_batch`); parameters
    and optimiser state are copied to every device (:attr:`replicated`,
    :meth:`replicate`).

    Attributes:
      mesh: the :class:`jax.sharding.Mesh` with the single axis ``"data"``.
    """

    mesh: Mesh

    #: Name of the mesh axis that batches are split along.
    AXIS = "data"

    @classmethod
    def create(cls, devices: Sequence[jax.Device] | None = None) -> DataParallel:
        """The layout over ``devices`` (default: all of ``jax.devices()``, every host).

        Raises:
          ValueError: an empty device list.
        """
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        return cls(Mesh(np.asarray(devices), ("data",)))

    @property
    def num_devices(self) -> int:
        """The number of devices in the mesh (across all hosts)."""
        return int(self.mesh.devices.size)

    @property
    def batch(self) -> NamedSharding:
        """Sharding of a batch: leading axis split over ``"data"``."""
        return NamedSharding(self.mesh, P("data"))

    @property
    def replicated(self) -> NamedSharding:
        """Sharding of parameters, optimiser state and metrics: a full copy per device."""
        return NamedSharding(self.mesh, P())

    def check_batch_size(self, batch_size: int, name: str = "batch_size") -> int:
        """Returns ``batch_size`` after checking that the devices split it evenly."""
        if batch_size < 1 or batch_size % self.num_devices:
            raise ValueError(
                f"{name}={batch_size} must be a positive multiple of the number of devices "
                f"({self.num_devices}: {self.describe()}), as data parallelism gives every "
                f"device the same share of the batch; choose e.g. "
                f"{name}={max(1, -(-batch_size // self.num_devices)) * self.num_devices}"
            )
        return batch_size

    def shard_batch(self, batch: np.ndarray) -> jax.Array:
        """Places a global (B, ...) host batch with its rows split over the devices."""
        self.check_batch_size(int(batch.shape[0]))
        if jax.process_count() == 1:
            return jax.device_put(batch, self.batch)
        rows = np.split(np.asarray(batch), jax.process_count())[jax.process_index()]
        return jax.make_array_from_process_local_data(self.batch, rows, batch.shape)

    def replicate(self, tree):
        """Places every array of ``tree`` on every device."""
        return jax.device_put(tree, self.replicated)

    def to_host(self, x: jax.Array) -> np.ndarray:
        """A numpy copy of a (possibly sharded, possibly multi-host) global array."""
        if jax.process_count() == 1:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    def describe(self) -> str:
        """A short description for logs, e.g. ``"2 x cpu"``."""
        kinds = sorted({d.device_kind for d in self.mesh.devices.flat})
        return f"{self.num_devices} x {'/'.join(kinds)}"
