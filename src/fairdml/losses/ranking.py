"""Loss family module: ranking (registers its losses on import)."""
