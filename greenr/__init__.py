"""greenr: shared code for the reproducible image-classification pipeline and its server."""
