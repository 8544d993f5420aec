"""Partition a mesh into patches, one per expert, and compute the experts' DOF index sets.

Data flow: ``partition_elements`` (mesh -> expert id per element, by a named method) then
``ExpertPartition.from_basis`` (basis + element ids + Dirichlet DOFs -> owned, local,
interface and interior DOFs of every expert); ``partition_experts`` does both.
"""

from femoe.partition._experts import ExpertPartition, dof_weights, partition_experts
from femoe.partition._graph import dual_graph, edge_cut
from femoe.partition._methods import (
    PARTITIONERS,
    available_methods,
    partition_elements,
    register_partitioner,
)
from femoe.partition._plot import plot_partition
from femoe.partition._time import time_windows

__all__ = [
    "ExpertPartition",
    "PARTITIONERS",
    "available_methods",
    "dof_weights",
    "dual_graph",
    "edge_cut",
    "partition_elements",
    "partition_experts",
    "plot_partition",
    "register_partitioner",
    "time_windows",
]
