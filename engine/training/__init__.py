"""What builds and measures the weights: the blemish synthesiser, training data, losses, the
training loop (``retouch train``), the classical baselines, metrics and ``retouch eval``.

Nothing on the run-time path (engine.retoucher, engine.pipeline, the GUI, ``retouch IMAGE``)
imports this package.
"""
