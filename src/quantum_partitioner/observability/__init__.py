"""Observability: what a run tells while it goes, and the pictures of it afterwards.

* ``_events``: the events and the :class:`Instrument` hooks that receive them (between
  layers 2 and 3: the run fires them);
* ``_trace``: :class:`TraceRecorder`, every attempt of a run, exported and loaded back;
* ``_progress``: :class:`ProgressBar`, a terminal's view of a run;
* ``_report``: the HTML report of a run;
* ``_metrics``: ``last_execution_metrics``, built from a run's record when first read;
* ``_render``: DOT and Mermaid text of a graph (layer 1, pure string building).

Its public names are imported from :mod:`quantum_partitioner`. This package imports nothing
itself, so that a worker process that needs one module loads only that one.
"""
