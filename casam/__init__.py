"""casam: clean-aware sharpness-aware minimization for learning with noisy labels."""

__version__ = "0.1.0"
