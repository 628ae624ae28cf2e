//! OTLP export through opentelemetry-otlp (grpc and http/protobuf).
//! Implementation pending.
