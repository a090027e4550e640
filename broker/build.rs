fn main() {
    println!("cargo:rerun-if-changed=../proto/tail.proto");
    tonic_prost_build::configure()
        .bytes(".")
        .compile_protos(&["../proto/tail.proto"], &["../proto"])
        .expect(
            "compiling proto/tail.proto (protoc: scripts/protoc, PROTOC in .cargo/config.toml)",
        );
}
