"""Loss family module: proxies (registers its losses on import)."""
