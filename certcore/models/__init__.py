"""Base classifiers: architectures, checkpoints (weights_only loading), data sets and training. Imports only
certcore.math and certcore.engine."""
