"""The HTTP layer of `lipsync serve`: model videos, the token endpoint, the page."""
