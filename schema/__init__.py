"""The bottom layer: what the other layers agree on, importing only the standard library, pydantic and numpy.

* :mod:`schema.messages` — the wire format (samples, telemetry batches, cycles, alarms, envelopes);
* :mod:`schema.source_settings` — what a source/driver reads: the parsed source URL (:class:`SourceUrl`),
  the agent's ``[source]`` settings (:class:`SourceSettings`) and the errors a bad URL raises;
* :mod:`schema.simulator_settings` — the physics simulator's settings (``[source.simulator]``).

Layers (imports point one way): schema ← hardware ← device_agent ← {ml, cloud}; ``tests/test_layers.py``
checks it.
"""
