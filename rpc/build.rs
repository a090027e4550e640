//! Every .proto file of Floe, compiled once.
fn main() {
    println!("cargo:rerun-if-changed=../proto/admin.proto");
    println!("cargo:rerun-if-changed=../proto/tail.proto");
    tonic_prost_build::configure()
        // The admin API's messages are also printed as JSON by floectl.
        .type_attribute(".floe.admin.v1", "#[derive(serde::Serialize)]")
        // Chunk payloads ride as the Bytes they arrived in.
        .bytes(".floe.tail.v1")
        .compile_protos(
            &["../proto/admin.proto", "../proto/tail.proto"],
            &["../proto"],
        )
        .expect("compiling proto/ (protoc: scripts/protoc, PROTOC in .cargo/config.toml)");
}
