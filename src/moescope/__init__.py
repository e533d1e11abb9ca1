"""moescope: make the geometry of high-dimensional spaces and of Mixture-of-Experts measurable."""

__version__ = "0.1.0"
