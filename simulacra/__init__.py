"""Simulacra: generative-agent town simulations on one shared local inference engine."""

__version__ = "0.1.0"
