"""Promotion: payback points for paid orders, kept as a ledger per customer."""
