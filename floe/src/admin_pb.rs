//! The admin API's messages and gRPC stubs (proto/admin.proto, generated in
//! `floe_rpc`).
pub use floe_rpc::admin::*;
