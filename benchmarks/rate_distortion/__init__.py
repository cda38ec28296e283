"""Rate-distortion atlas of real federated updates (``python -m benchmarks.rate_distortion``).

See ``README.md`` in this folder for the method, the findings and what the
Gaussian reference curve does and does not bound.
"""
