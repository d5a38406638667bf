"""Order: where customers place and cancel orders (the seed's `app`), and the saga's start."""
