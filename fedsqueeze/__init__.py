"""Core of FedSqueeze: MNIST, partitions, models, training, config, ledger, and the protocol both apps share.

Flower-free except :mod:`fedsqueeze.protocol.messages` (the Flower message schema).
"""
