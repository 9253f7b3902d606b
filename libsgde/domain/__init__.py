"""Plain domain types, free of gRPC, protobuf and I/O: resource names, training specs, privacy reports."""
