"""Status dashboard: a read-only web page served by a faust worker.

``state`` folds records into a view model (pure), ``hub`` fans snapshots out
to server-sent-event clients through bounded per-client queues, ``agent``
wires both into a worker (``tradeflow worker --agents dashboard``).
"""
