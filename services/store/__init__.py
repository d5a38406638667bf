"""Store: the dealer's side, which ships paid orders (the seed's `store`)."""
