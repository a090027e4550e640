fn main() {
    println!("cargo:rerun-if-changed=../proto/admin.proto");
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize)]")
        .compile_protos(&["../proto/admin.proto"], &["../proto"])
        .expect(
            "compiling proto/admin.proto (protoc: scripts/protoc, PROTOC in .cargo/config.toml)",
        );
}
