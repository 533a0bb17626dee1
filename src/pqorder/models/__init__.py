"""Model loading (``loading``), adapters (blocks and compressible units) and built-in models."""
