"""simulacra.world: see docs/ARCHITECTURE.md."""
