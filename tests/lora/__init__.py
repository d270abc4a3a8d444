"""Tests of lora."""
