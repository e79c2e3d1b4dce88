"""Untrusted image and transform files: decoded by third-party readers only in confined processes."""
