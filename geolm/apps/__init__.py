"""Floor 6: pipelines behind the example scripts (the geometric table, the Riemann run), telemetry, semantic maps, generation, plots."""
