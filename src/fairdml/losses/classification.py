"""Loss family module: classification (registers its losses on import)."""
