"""Where the adapters go: the strategy grammar, the architecture classifier, plans and
automatic placement."""
