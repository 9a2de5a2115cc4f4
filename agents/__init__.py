"""simulacra.agents: see docs/ARCHITECTURE.md."""
