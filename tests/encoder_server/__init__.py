"""Tests of encoder_server."""
