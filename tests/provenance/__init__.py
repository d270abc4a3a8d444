"""Tests of provenance."""
