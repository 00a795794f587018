//! Build script: compiles the kernels in `kernels/*.cu` for the enabled backends.
//! Each backend's build lives in `build_support/`; this file only dispatches.

#[path = "build_support/emu.rs"]
mod emu;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Backend `emu`: the kernels compiled by the host C++ compiler against kernels/emu/.
    if std::env::var_os("CARGO_FEATURE_EMU").is_some() {
        emu::build();
    }
    // Backend `cuda`: the nvcc build (build_support/nvcc.rs) is dispatched here.
}
