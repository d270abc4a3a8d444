"""Client exceptions, one per way a generation can fail; the CLI prints each as one line.

ClientError                      exit code
├── EncoderUnavailableError      3   server down, wrong host or port, or overloaded (after retries)
├── EncoderTimeoutError          3   the call passed its deadline
├── EncoderRejectedError         2   the server refused the request (status code kept)
├── EncoderFailedError           3   the server failed on a valid request (INTERNAL, UNKNOWN, ...)
├── BadReplyError                3   reply bytes failed checksum, size, dtype or shape checks
├── ModelMismatchError           4   encoder output does not fit the local transformer
└── GenerationInputError         2   bad size, unreadable image or prompts file, no GPU for NF4
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class; `str(error)` is one line saying what went wrong and what to do."""

    exit_code = 1


class EncoderUnavailableError(ClientError):
    exit_code = 3


class EncoderTimeoutError(ClientError):
    exit_code = 3


class EncoderRejectedError(ClientError):
    exit_code = 2

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


class EncoderFailedError(ClientError):
    exit_code = 3


class BadReplyError(ClientError):
    exit_code = 3


class ModelMismatchError(ClientError):
    exit_code = 4


class GenerationInputError(ClientError):
    exit_code = 2
