"""Tests of the local mesh: policy parsing, Envoy rendering, and the real Envoy in between."""
