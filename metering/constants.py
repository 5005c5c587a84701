"""The accounting-service's service subtypes (its app/constants.py and the SDK 0.6.8 enum)."""

from __future__ import annotations

SUBTYPES = [
    "ion-channel-build", "ion-channel-sim", "ml-llm", "mcp", "ml-rag", "ml-retrieval",
    "neuron-mesh-skeletonization", "notebook", "single-cell-build", "single-cell-sim",
    "small-circuit-sim", "storage", "synaptome-build", "synaptome-sim", "single-sim", "pair-sim",
    "small-sim", "microcircuit-sim", "region-sim", "system-sim", "whole-brain-sim",
    "circuit-extraction", "circuit-simplification", "em-synapse-mapping",
    "brian2-circuit-simulation", "emodel-features-extraction", "emodel-optimisation",
    "emodel-validation", "synapse-parameterization-small", "synapse-parameterization-large",
    "extracellular-recording-array-build",
]  # fmt: skip
LEGACY_SUBTYPES = {"ml-rag", "ml-retrieval"}

# Upper bounds of long-running and storage quantities: a job whose cost can never be charged
# would stay open for ever. (A count needs none: its cost is checked when it is reserved.)
MAX_INSTANCES = 1_000_000
MAX_DURATION_SECONDS = 10 * 366 * 86400  # ten years
MAX_STORAGE_BYTES = 10**18  # an exabyte
MAX_QUANTITY = 2**63 - 1  # units in one count or tier bound: a PostgreSQL bigint
MAX_LABEL = 255  # a name or instance type sent with a job
