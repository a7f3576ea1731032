"""Shared code of *Deep Markov Models, an executable book*.

One module per concept, each introduced by a chapter in ``notebooks/`` and
imported by the chapters after it:

- :mod:`dmm_helpers.lgssm`      -- linear Gaussian state space models: Kalman
  filter, exact likelihood, RTS smoother (chapter 01)
- :mod:`dmm_helpers.data`       -- JSB chorales, the offline stand-in, a reader's
  own music, data sets by name, padded and reversed mini-batches (chapter 02)
- :mod:`dmm_helpers.music`      -- piano rolls: plots, music21 streams, MIDI,
  audio, scores and statistics (chapters 02 and 07)
- :mod:`dmm_helpers.display`    -- tables, a package object's source, a method
  added to a class in its own cell (chapters 02-04)
- :mod:`dmm_helpers.modules`    -- emitter, gated transition, forward and
  backward RNNs, combiner, mean-field layer (chapters 03, 04 and 08)
- :mod:`dmm_helpers.dmm`        -- the DMM's Pyro ``model`` and its five
  ``guide``\\ s (chapters 03-05 and 08)
- :mod:`dmm_helpers.elbo`       -- the vectorised ELBO, equal to Pyro's (chapter 05)
- :mod:`dmm_helpers.checks`     -- input checks and atomic file writes
- :mod:`dmm_helpers.cli`        -- command-line errors: usage errors, one-line
  messages, exit statuses
- :mod:`dmm_helpers.checkpoint` -- checkpoints and run folders (chapter 06)
- :mod:`dmm_helpers.devices`    -- choosing the CPU or a GPU (chapter 06)
- :mod:`dmm_helpers.train`      -- ``python -m dmm_helpers.train`` (chapter 06)
- :mod:`dmm_helpers.evaluate`   -- bound and importance-sampled NLL (chapters 06
  and 07)
- :mod:`dmm_helpers.pretrained` -- the shipped models and queries of their
  training logs (chapters 06 and 07)
- :mod:`dmm_helpers.generate`   -- sampling and continuing chorales (chapter 07)
- :mod:`dmm_helpers.latents`    -- KL per latent dimension and active units
  (chapter 08)

The package never imports a notebook; data flows one way, from ``data`` to
the models, training, evaluation and music.
"""

__version__ = "0.1.0"
