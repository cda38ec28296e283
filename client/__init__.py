"""FedSqueeze ClientApp: receive the model, train locally, compress the update."""
