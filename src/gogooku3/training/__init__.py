"""Training the ATFT-GAT-FAN network: Lightning fit loop, callbacks, checkpoints, member worker pool, inference."""
