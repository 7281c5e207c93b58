"""Measurements on finished videos (A/V sync); reads files through `media`, uses `core`'s clock."""
