"""Which tasks belong together: training-free task similarity (``similarity``, with its layer
weightings and the ``prunekit similarity`` run) and the task-grouping search (``grouping``,
with the ``prunekit group`` inputs)."""
