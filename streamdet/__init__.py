"""streamdet: a streaming bird-call detector daemon."""
__version__ = "0.1.0"
