"""Worked examples of extending FedSqueeze through its public API (see ``docs/extending.md``)."""
