"""Declarative search spaces (the YAML files beside this one), shipped in the wheel as `autoslm.search_spaces`."""
