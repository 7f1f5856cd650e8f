"""tomoguide: a guided desktop wizard for cryo-electron tomography.

From raw tilt-series movies to a subtomogram average of apoferritin, one guided step at a time, with every
computation done by tomoguide itself (see ``compute/``). Qt lives only in ``pages/`` and ``widgets/``.
"""

__version__ = "0.1.0"
