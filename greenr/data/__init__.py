"""Data: image decoding and preprocessing, the class folders and split manifests, ingestion."""
