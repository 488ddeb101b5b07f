"""Floor 4: models."""
