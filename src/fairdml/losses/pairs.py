"""Loss family module: pairs (registers its losses on import)."""
