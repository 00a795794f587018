//! `nvcc` half of the build script (feature `cuda`): compiles every `kernels/*.cu` into one
//! fatbin per file (PTX for `compute_80`, JIT-able on any newer GPU, plus `sm_90` machine
//! code), embeds them through a generated `$OUT_DIR/kernels.rs`, and keeps ptxas's resource
//! report in `$OUT_DIR/ptxas.txt`.
//!
//! `nvcc` is looked up in `$NVCC`, `$CUDA_HOME/bin`, `PATH`, then the project-local
//! `.cuda-toolchain/` (scripts/install-cuda-toolchain.sh). Without one the crate builds
//! without kernels (one `cargo:warning`, and the runtime reports `KernelsUnavailable`),
//! unless `RQTREE_REQUIRE_NVCC=1`, which makes that a build failure. Never uses the network.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags of every kernel compile: the reference's arithmetic needs `-fmad=false` (a rounded
/// multiply then a rounded add, never a fused multiply-add).
const NVCC_FLAGS: &[&str] = &[
    "-fatbin",
    "-std=c++17",
    "-O3",
    "-fmad=false",
    "-gencode",
    "arch=compute_80,code=compute_80",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-Xptxas",
    "-v",
];

/// Entry point called by build.rs when `CARGO_FEATURE_CUDA` is set.
pub fn build() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels = manifest.join("kernels");
    for var in ["NVCC", "CUDA_HOME", "RQTREE_REQUIRE_NVCC", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed={}", kernels.display());
    let sources = kernel_sources(&kernels);
    for s in &sources {
        println!("cargo:rerun-if-changed={}", s.display());
    }
    if let Ok(rd) = fs::read_dir(&kernels) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "cuh") {
                println!("cargo:rerun-if-changed={}", e.path().display());
            }
        }
    }
    let require = env::var("RQTREE_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc(&manifest) else {
        let why = "nvcc not found ($NVCC, $CUDA_HOME/bin, PATH, .cuda-toolchain/); \
                   built without CUDA kernels (run scripts/install-cuda-toolchain.sh)";
        if require {
            panic!("RQTREE_REQUIRE_NVCC=1: {why}");
        }
        println!("cargo:warning={why}");
        write_rs(&out, &[], Some(why));
        return;
    };
    let mut report = String::new();
    let mut images = Vec::new();
    for src in &sources {
        let stem = src
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kernel")
            .to_string();
        let fatbin = out.join(format!("{stem}.fatbin"));
        let mut cmd = Command::new(&nvcc);
        cmd.args(NVCC_FLAGS)
            .arg("-I")
            .arg(&kernels)
            .args(include_dirs(&nvcc))
            .arg(src)
            .arg("-o")
            .arg(&fatbin);
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("running {}: {e}", nvcc.display()),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!(
                "nvcc failed on {} ({}):\n{}{}",
                src.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                stderr
            );
        }
        let _ = writeln!(report, "# {}", src.display());
        report.push_str(&stderr);
        images.push((stem, fatbin));
    }
    fs::write(out.join("ptxas.txt"), report).expect("write ptxas.txt");
    write_rs(&out, &images, None);
}

/// `kernels/*.cu`, sorted.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The first usable nvcc: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `PATH`, `.cuda-toolchain/`.
fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("NVCC") {
        cands.push(PathBuf::from(p));
    }
    if let Some(h) = env::var_os("CUDA_HOME") {
        cands.push(PathBuf::from(h).join("bin").join("nvcc"));
    }
    if let Some(path) = env::var_os("PATH") {
        cands.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    let tc = manifest.join(".cuda-toolchain");
    cands.push(tc.join("site/nvidia/cu13/bin/nvcc"));
    cands.into_iter().find(|p| p.is_file())
}

/// Header folders of a wheel-installed nvcc (`…/cu13/bin/nvcc` → `cu13/include` and its
/// `cccl`); a regular CUDA install finds its headers by itself, and extra `-I`s to folders
/// that exist do no harm.
fn include_dirs(nvcc: &Path) -> Vec<String> {
    let Some(root) = nvcc.parent().and_then(Path::parent) else {
        return Vec::new();
    };
    [root.join("include"), root.join("include").join("cccl")]
        .into_iter()
        .filter(|d| d.is_dir())
        .map(|d| format!("-I{}", d.display()))
        .collect()
}

/// Writes `$OUT_DIR/kernels.rs`: the embedded images and, when there are none, why.
fn write_rs(out: &Path, images: &[(String, PathBuf)], missing: Option<&str>) {
    let mut s = String::from(
        "/// Compiled kernel images (fatbins), one per `kernels/*.cu`: (file stem, bytes).\n\
         pub const KERNEL_IMAGES: &[(&str, &[u8])] = &[\n",
    );
    for (stem, path) in images {
        let _ = writeln!(
            s,
            "    ({stem:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    s.push_str("];\n");
    let _ = writeln!(
        s,
        "/// Why the build has no kernels (`None` when it has them).\n\
         pub const KERNELS_MISSING: Option<&str> = {missing:?};"
    );
    fs::write(out.join("kernels.rs"), s).expect("write kernels.rs");
}
