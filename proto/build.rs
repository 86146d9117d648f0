//! Generates the prost types of `astroflight.proto` at build time. The .proto is compiled by
//! protox (a protobuf compiler in Rust), so no system `protoc` is needed: a fresh clone builds
//! with `cargo build` alone. The output goes to `OUT_DIR`, never into the source tree.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=astroflight.proto");
    let files = protox::compile(["astroflight.proto"], ["."])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
