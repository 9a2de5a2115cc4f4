"""simulacra.inference: the model core and (later) the shared serving engine.

Knows nothing of residents or towns.
"""
