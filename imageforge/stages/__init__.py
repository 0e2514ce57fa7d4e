"""The pipeline's stages, in the order the data flows: render, validate, build, verify, box,
publish."""
