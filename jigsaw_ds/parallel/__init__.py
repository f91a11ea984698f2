"""Jigsaw parallelism: layout and groups (topology), collectives (mappings), split-tagged layers."""
