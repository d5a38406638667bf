"""Customer view: the CQRS read model of every order's progress and points (seed: `customer`)."""
