//! The admin API's messages and gRPC stubs, generated from proto/admin.proto.
tonic::include_proto!("floe.admin.v1");
