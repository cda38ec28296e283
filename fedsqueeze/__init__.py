"""Flower-free core of FedSqueeze: MNIST, partitions, models, training, config, ledger."""
