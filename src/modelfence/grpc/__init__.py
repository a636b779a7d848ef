"""The Open Inference Protocol over gRPC: its messages (inference_pb2, generated from the
repository's proto/inference.proto), their conversion to the gateway's tensors, and its status
codes. Needs the `grpc` extra (grpcio, protobuf)."""
