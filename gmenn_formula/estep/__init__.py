"""E-step: draws of the random effects given the network output and the variances.

Two E-steps with one interface (``draw``, ``set_weights``, ``use_sampler``):
:class:`~gmenn_formula.estep.driver.EStep`, NUTS on the PyMC model compiled to JAX
(every family), and :class:`~gmenn_formula.estep.gaussian.GaussianEStep`, exact
block-Gibbs draws in torch (gaussian models: no compilation). Their common types
are in :mod:`gmenn_formula.estep.arrays`, which imports neither PyMC nor JAX. See
:mod:`gmenn_formula.estep.sampler` for the sampler,
:mod:`gmenn_formula.estep.precondition` for the per-level whitening and
:mod:`gmenn_formula.estep.runtime` for the process-wide JAX settings.
"""

from gmenn_formula.estep import runtime  # noqa: F401  first: it records XLA_FLAGS before PyMC's import changes them
