"""greenr: shared code for the dandelion-vs-grass pipeline and server."""
