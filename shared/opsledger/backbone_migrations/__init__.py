"""Revisions of the shared `backbone` branch, applied to every service database."""
