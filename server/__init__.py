"""FedSqueeze ServerApp: broadcast, decode, validate, aggregate, evaluate, ledger."""
