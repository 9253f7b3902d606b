"""The contract's size limits, in one place: messages of at most 4 MiB, large payloads in chunks of at most 1 MiB."""

from __future__ import annotations

import grpc

MAX_MESSAGE_BYTES = 4 << 20
CHUNK_SIZE = 1 << 20
SAMPLE_REQUEST_BYTES = 256 << 20  # default bound on the memory of one Sample request (libsgde.io.sampling)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def secure_channel(address: str, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    """A mutual-TLS channel with SGDE's message size limits."""
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
