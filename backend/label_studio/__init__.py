"""Label Studio 1.23.2 ML-backend protocol: labeling-config parsing, region conversions, the predict logic."""
