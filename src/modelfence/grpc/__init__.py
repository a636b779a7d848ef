"""The Open Inference Protocol over gRPC: its messages (inference.proto), their conversion to
the gateway's tensors, and its status codes. Needs the `grpc` extra (grpcio, protobuf)."""
