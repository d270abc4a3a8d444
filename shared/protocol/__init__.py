"""Generated protobuf and gRPC modules; edit proto/ and run `make proto`."""
