"""Payment: a stand-in for a third-party payment gateway (the seed's `pay`)."""
