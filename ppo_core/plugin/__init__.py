"""The plugin contract (base classes, hook specs), entry-point loading and the registry."""
