"""Shared code of *Deep Markov Models, an executable book*.

One module per concept, imported by the chapters in ``notebooks/``:

- :mod:`dmm_helpers.lgssm`  -- linear Gaussian state space models (chapter 01)
- :mod:`dmm_helpers.data`   -- JSB chorales, own data, padded mini-batches (chapter 02)
- :mod:`dmm_helpers.music`  -- piano rolls: plots and audio (chapter 02)

The package never imports a notebook; data flows one way, from ``data`` to
the models and on to training and evaluation.
"""

__version__ = "0.1.0"
