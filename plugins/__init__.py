"""autoslm's built-in technique plugins (installed as package `autoslm_plugins`).

Each module is an entry point of group `autoslm` in autoslm's pyproject.toml, written exactly as a third-party
plugin would be: it imports only autoslm's public API.
"""
