"""simulacra.viewer: see docs/ARCHITECTURE.md."""
