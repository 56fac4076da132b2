"""Data layer: schema, feature encoders, loaders, splits, sampling, the synthetic world."""
