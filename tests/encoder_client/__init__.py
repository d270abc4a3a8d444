"""Tests of encoder_client."""
