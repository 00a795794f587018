//! Build script: compiles the kernels in `kernels/*.cu` for the enabled backends. Each
//! backend's build lives in `build_support/`; this file only dispatches.

#[path = "build_support/emu.rs"]
mod emu;
#[path = "build_support/nvcc.rs"]
mod nvcc;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Backend `emu`: the kernels compiled by the host C++ compiler against kernels/emu/.
    if std::env::var_os("CARGO_FEATURE_EMU").is_some() {
        emu::build();
    }
    // Backend `cuda`: the kernels compiled by nvcc to PTX + sm_90 and embedded.
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        nvcc::build();
    }
}
