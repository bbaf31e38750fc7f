"""The plugins that ship with the framework; each sub-package is one task."""
