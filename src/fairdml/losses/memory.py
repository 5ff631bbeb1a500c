"""Loss family module: memory (registers its losses on import)."""
