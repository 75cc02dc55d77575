"""The offline indexer: corpus -> model -> accumulate -> store."""
