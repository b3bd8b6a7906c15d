//! Generates the Kubernetes ExternalJWTSigner gRPC code (server and client) from proto/.
//! protoc comes from `protoc-bin-vendored`, so building needs no system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/externaljwt/v1/api.proto",
        "proto/externaljwt/v1alpha1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let protos = protos.map(std::path::PathBuf::from);
    let includes = [
        std::path::PathBuf::from("proto"),
        protoc_bin_vendored::include_path()?,
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &protos, &includes)?;
    Ok(())
}
