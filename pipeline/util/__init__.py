"""The lowest layer: small helpers every other package may use and that import nothing of the
pipeline (atomic files and checksums, locks, the strict YAML loader, ranks and CPU threads)."""
