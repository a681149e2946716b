"""Operations: the object store, MLflow tracking, input-drift monitoring."""
