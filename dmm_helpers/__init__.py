"""Shared code of *Deep Markov Models, an executable book*.

One module per concept, each introduced by a chapter in ``notebooks/`` and
imported by the chapters after it:

- :mod:`dmm_helpers.lgssm`    -- linear Gaussian state space models: Kalman filter,
  exact likelihood, RTS smoother (chapter 01)
- :mod:`dmm_helpers.data`     -- JSB chorales, the offline stand-in, a reader's own
  music, padded and reversed mini-batches (chapter 02)
- :mod:`dmm_helpers.music`    -- piano rolls: plots, music21 streams, MIDI, audio,
  scores and statistics (chapters 02 and 07)
- :mod:`dmm_helpers.modules`  -- emitter, gated transition, backward RNN, combiner
  (chapters 03 and 04)
- :mod:`dmm_helpers.dmm`      -- the DMM's Pyro ``model`` and ``guide`` (chapters 03-05)
- :mod:`dmm_helpers.elbo`     -- the vectorised ELBO, equal to Pyro's (chapter 05)
- :mod:`dmm_helpers.train`    -- ``python -m dmm_helpers.train`` (chapter 06)
- :mod:`dmm_helpers.evaluate` -- bound and importance-sampled NLL (chapters 06 and 07)
- :mod:`dmm_helpers.generate` -- sampling and continuing chorales (chapter 07)

The package never imports a notebook; data flows one way, from ``data`` to
the models, training, evaluation and music.
"""

__version__ = "0.1.0"
