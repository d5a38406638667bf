"""Tests of the Helm chart helm/phoneseller: rendered by the real Helm engine, checked offline."""
