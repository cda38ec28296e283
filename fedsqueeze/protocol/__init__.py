"""What the ServerApp and the ClientApps agree on: the only module both sides import.

``server/`` and ``client/`` never import each other (``tests/test_architecture.py``
checks it); everything that crosses the wire is declared here, once:

* :mod:`.messages` — the Flower message schema: record names (``config``,
  ``model``, ``update``, ...) and raw uint8 payload records (imports Flower);
* :mod:`.instructions` — what the server announces and a client obeys:
  :class:`~.instructions.TrainInstruction` (a training round),
  :class:`~.instructions.StageQuery` (a model-compression query), the wire
  constant :data:`~.instructions.FULL_MODEL` and the activation-range metrics
  of a calibration reply (Flower-free);
* :mod:`.reference` — the positions a ``coder=context`` uplink is coded
  against: the support of the deltas the client received (Flower-free);
* :mod:`.records` — frozen dataclasses <-> kebab-case ``ConfigRecord``
  mappings (Flower-free).

The package itself imports nothing, so Flower-free code can use
:mod:`.instructions` without loading Flower.
"""
