//! Compiles every contract under `kz/` with protox (pure Rust, no `protoc` needed), writes
//! the descriptor set (with comments, for reflection) and generates the tonic code.

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read proto dir").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            protos(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=kz");
    println!("cargo:rerun-if-changed=google");
    let mut files = vec![];
    protos(Path::new("kz"), &mut files);
    // For reflection only: lets grpcurl decode the error details every node sends.
    files.push(PathBuf::from("google/rpc/error_details.proto"));
    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&files)?;
    // Encoded by protox itself: prost_types would drop the custom options
    // (`kz.shep.v1.personal_data`, `identifier`) that the bus reads at start-up.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("shep_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    let mut fds = compiler.file_descriptor_set();
    // No Rust code for google.rpc: tonic-types has it.
    fds.file.retain(|f| f.package() != "google.rpc");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
