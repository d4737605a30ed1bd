//! Compiles the .proto files with the vendored protoc, so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/etcd/kv.proto",
            "proto/etcd/rpc.proto",
            "proto/etcd/v3lock.proto",
            "proto/etcd/v3election.proto",
            "proto/cluster/raft.proto",
            "proto/cluster/cluster.proto",
            "proto/cluster/registry.proto",
            "proto/cluster/ipam.proto",
            "proto/cluster/services.proto",
            "proto/cluster/jobs.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
