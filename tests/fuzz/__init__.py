"""Coverage-guided fuzz targets (atheris) for every parser that meets hostile bytes; seeds in
`corpus/<target>/`. Run with `scripts/fuzz TARGET --seconds N`; CI: tests/unit/fuzz."""
