"""Shipped model files (mapped into the package as deepdefacer.models)."""
