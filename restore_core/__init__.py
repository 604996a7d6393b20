"""Pure numerics and I/O for image restoration: NMF dead-pixel filling, SR, metrics.

Nothing in this package imports ray: every function runs in a plain Python process.
"""

__version__ = "0.1.0"
