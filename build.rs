//! Build script: compiles the CUDA kernels with `nvcc` when the `cuda` feature is on.

#[path = "build_support/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        nvcc::build();
    }
}
