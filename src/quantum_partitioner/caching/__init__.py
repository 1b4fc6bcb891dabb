"""Caching: results served again while a unit's inputs are unchanged.

* ``_partitioner``: :class:`CachingQuantumPartitioner` (layer 4), its key policy and each
  run's keys;
* ``_stores``: where results are kept, :class:`MemoryStore` and :class:`SQLiteStore` (the
  file format, its crash safety and its writer thread), behind :class:`CacheStore`;
* ``_fingerprint``: content fingerprints of values and functions, the parts of a key.

Its public names are imported from :mod:`quantum_partitioner`. This package imports nothing
itself, so that using one of its modules does not load the others.
"""
