"""Integrations with third-party training frameworks (each imports its framework lazily)."""
