"""Helpers the tests share: real processes, servers, files, browsers."""
