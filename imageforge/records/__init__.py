"""The build record: its model, its store and registry, and what is read from it."""
