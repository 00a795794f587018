//! Self-tests of the `emu` runtime: the kernels in `kernels/emu/tests/*.cu` run on the
//! emulator and are compared with plain Rust; misuse must come back as a launch error naming
//! the kernel, block and thread. Each test prints how many emulated kernels it launched.
#![cfg(feature = "emu")]

use std::sync::atomic::{AtomicUsize, Ordering};

use rqtree::device::emu::{AsyncCopies, EmuBuffer, EmuDevice, FiberOrder};
use rqtree::device::{Device, DeviceExt, KernelArg, LaunchConfig};
use rqtree::Error;

use KernelArg::{Buf, F32, I32, I64, U32, U64};

/// Launches counted per test.
struct Counter {
    name: &'static str,
    launches: AtomicUsize,
}

impl Counter {
    fn new(name: &'static str) -> Self {
        Counter {
            name,
            launches: AtomicUsize::new(0),
        }
    }

    fn launch(
        &self,
        dev: &EmuDevice,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, EmuBuffer>],
    ) -> rqtree::Result<()> {
        self.launches.fetch_add(1, Ordering::Relaxed);
        dev.launch(kernel, cfg, args)
    }

    fn ok(
        &self,
        dev: &EmuDevice,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, EmuBuffer>],
    ) {
        if let Err(e) = self.launch(dev, kernel, cfg, args) {
            panic!("{kernel}: {e}");
        }
    }

    /// Launches a kernel that must fail; returns the message.
    fn err(
        &self,
        dev: &EmuDevice,
        kernel: &str,
        cfg: LaunchConfig,
        args: &[KernelArg<'_, EmuBuffer>],
    ) -> String {
        match self.launch(dev, kernel, cfg, args) {
            Err(Error::Device(msg)) => {
                assert!(msg.contains(&format!("kernel `{kernel}`")), "{msg}");
                assert!(msg.contains("block ("), "{msg}");
                assert!(msg.contains("thread ("), "{msg}");
                msg
            }
            other => panic!("{kernel}: expected a device error, got {other:?}"),
        }
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        println!(
            "emu: {} ran {} emulated kernel launches",
            self.name,
            self.launches.load(Ordering::Relaxed)
        );
    }
}

/// The device most tests use: `RQTREE_EMU_WORKERS` / `RQTREE_EMU_ORDER` apply, so the suite
/// can be rerun with `RQTREE_EMU_ORDER=reverse`.
fn dev() -> EmuDevice {
    EmuDevice::new()
}

/// A deterministic pseudo-random sequence.
fn lcg(seed: u64, n: usize) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u32
        })
        .collect()
}

#[test]
fn registry_lists_the_test_kernels() {
    let names = EmuDevice::kernels();
    assert!(names.contains(&"rq_emu_test_shuffles"), "{names:?}");
    assert!(EmuDevice::has_kernel("rq_emu_test_switch_bench"));
    assert!(!EmuDevice::has_kernel("no_such_kernel"));
    println!("emu: {} kernels registered", names.len());
}

#[test]
fn barriers_order_shared_memory() {
    let c = Counter::new("barriers_order_shared_memory");
    let d = dev();
    let (blocks, n) = (7u32, 256u32);
    let out = d.alloc_zeroed::<i32>((blocks * n) as usize).unwrap();
    c.ok(
        &d,
        "rq_emu_test_barrier_order",
        LaunchConfig::linear(blocks, n),
        &[Buf(&out)],
    );
    let got: Vec<i32> = d.download_vec(&out, (blocks * n) as usize).unwrap();
    for b in 0..blocks {
        for t in 0..n {
            assert_eq!(
                got[(b * n + t) as usize],
                (t * 2 + b * 10000 + 1) as i32,
                "b {b} t {t}"
            );
        }
    }
}

/// CUDA's shuffle semantics, written independently of the scheduler.
fn shfl(vals: &[i32], lane: usize, kind: &str, arg: i32, width: usize) -> i32 {
    let base = lane / width * width;
    let pos = lane % width;
    match kind {
        "idx" => vals[base + (arg as usize % width)],
        "up" => {
            if pos >= arg as usize {
                vals[lane - arg as usize]
            } else {
                vals[lane]
            }
        }
        "down" => {
            if pos + (arg as usize) < width {
                vals[lane + arg as usize]
            } else {
                vals[lane]
            }
        }
        _ => {
            let src = lane ^ arg as usize;
            if src < base + width {
                vals[src]
            } else {
                vals[lane]
            }
        }
    }
}

#[test]
fn every_shuffle_flavour() {
    let c = Counter::new("every_shuffle_flavour");
    let d = dev();
    let (blocks, n) = (3u32, 64u32);
    let total = (blocks * n) as usize;
    let out = d.alloc_zeroed::<i32>(total * 8).unwrap();
    c.ok(
        &d,
        "rq_emu_test_shuffles",
        LaunchConfig::linear(blocks, n),
        &[Buf(&out)],
    );
    let got: Vec<i32> = d.download_vec(&out, total * 8).unwrap();
    for warp in 0..total / 32 {
        let vals: Vec<i32> = (0..32).map(|l| ((warp * 32 + l) * 3 + 1) as i32).collect();
        for l in 0..32 {
            let want = [
                shfl(&vals, l, "idx", ((l * 7 + 3) % 32) as i32, 32),
                shfl(&vals, l, "idx", l as i32 + 5, 8),
                shfl(&vals, l, "up", 3, 32),
                shfl(&vals, l, "up", 2, 16),
                shfl(&vals, l, "down", 5, 32),
                shfl(&vals, l, "down", 3, 8),
                shfl(&vals, l, "xor", 13, 32),
                shfl(&vals, l, "xor", 9, 8),
            ];
            let g = warp * 32 + l;
            assert_eq!(&got[g * 8..g * 8 + 8], &want, "thread {g}");
        }
    }

    let m = 64usize;
    let dv: Vec<f64> = (0..m).map(|i| i as f64 * 1.25 - 7.0).collect();
    let fv: Vec<f32> = (0..m).map(|i| (i as f32).sqrt()).collect();
    let uv: Vec<u64> = (0..m).map(|i| (i as u64) << 40 | 0xabc).collect();
    let (db, fb, ub) = (
        d.alloc_from(&dv).unwrap(),
        d.alloc_from(&fv).unwrap(),
        d.alloc_from(&uv).unwrap(),
    );
    c.ok(
        &d,
        "rq_emu_test_shuffle_types",
        LaunchConfig::linear(2, 32),
        &[Buf(&db), Buf(&fb), Buf(&ub)],
    );
    let dg: Vec<f64> = d.download_vec(&db, m).unwrap();
    let fg: Vec<f32> = d.download_vec(&fb, m).unwrap();
    let ug: Vec<u64> = d.download_vec(&ub, m).unwrap();
    for i in 0..m {
        assert_eq!(dg[i], dv[i ^ 1]);
        let down = if i % 32 == 31 { i } else { i + 1 };
        assert_eq!(fg[i].to_bits(), fv[down].to_bits());
        assert_eq!(ug[i], uv[i / 32 * 32]);
    }
}

#[test]
fn ballot_any_all() {
    let c = Counter::new("ballot_any_all");
    let d = dev();
    let warps = 6usize;
    let mut pred: Vec<i32> = lcg(7, warps * 32)
        .iter()
        .map(|&r| (r % 3 == 0) as i32)
        .collect();
    pred[32..64].fill(1); // an all-true warp
    pred[64..96].fill(0); // an all-false warp
    let pb = d.alloc_from(&pred).unwrap();
    let out = d.alloc_zeroed::<u32>(warps * 32 * 4).unwrap();
    c.ok(
        &d,
        "rq_emu_test_votes",
        LaunchConfig::linear(2, 96),
        &[Buf(&pb), Buf(&out)],
    );
    let got: Vec<u32> = d.download_vec(&out, warps * 32 * 4).unwrap();
    for w in 0..warps {
        let p = &pred[w * 32..w * 32 + 32];
        let ballot = p
            .iter()
            .enumerate()
            .fold(0u32, |m, (l, &v)| m | (((v != 0) as u32) << l));
        for l in 0..32 {
            let g = w * 32 + l;
            let want = [
                ballot,
                (ballot != 0) as u32,
                (ballot == u32::MAX) as u32,
                u32::MAX,
            ];
            assert_eq!(&got[g * 4..g * 4 + 4], &want, "thread {g}");
        }
    }
}

#[test]
fn atomics_across_blocks_and_workers() {
    let c = Counter::new("atomics_across_blocks_and_workers");
    for workers in [2, 4] {
        let d = EmuDevice::with_workers(workers).with_order(dev().order());
        let (blocks, n) = (300u32, 128u32);
        let total = u64::from(blocks * n);
        let fsum = d.alloc_zeroed::<f32>(1).unwrap();
        let isum = d.alloc_zeroed::<i32>(1).unwrap();
        let usum = d.alloc_zeroed::<u32>(1).unwrap();
        let u64sum = d.alloc_zeroed::<u64>(1).unwrap();
        let imin = d.alloc_from(&[i32::MAX]).unwrap();
        let imax = d.alloc_from(&[i32::MIN]).unwrap();
        let cas = d.alloc_zeroed::<u32>(1).unwrap();
        let exch = d.alloc_from(&[-1i32]).unwrap();
        c.ok(
            &d,
            "rq_emu_test_atomics",
            LaunchConfig::linear(blocks, n),
            &[
                Buf(&fsum),
                Buf(&isum),
                Buf(&usum),
                Buf(&u64sum),
                Buf(&imin),
                Buf(&imax),
                Buf(&cas),
                Buf(&exch),
            ],
        );
        let one = |b: &EmuBuffer| -> u64 { d.download_vec::<u64>(b, 1).map(|v| v[0]).unwrap_or(0) };
        assert_eq!(d.download_vec::<f32>(&fsum, 1).unwrap()[0], total as f32);
        let isum_want: i64 = (0..total).map(|g| (g % 7) as i64 - 3).sum();
        assert_eq!(
            i64::from(d.download_vec::<i32>(&isum, 1).unwrap()[0]),
            isum_want
        );
        assert_eq!(
            u64::from(d.download_vec::<u32>(&usum, 1).unwrap()[0]),
            (0..total).sum::<u64>()
        );
        assert_eq!(one(&u64sum), (0..total).map(|g| g << 20).sum::<u64>());
        assert_eq!(
            d.download_vec::<i32>(&imin, 1).unwrap()[0],
            -(total as i32 - 1)
        );
        assert_eq!(
            d.download_vec::<i32>(&imax, 1).unwrap()[0],
            total as i32 - 1
        );
        assert_eq!(u64::from(d.download_vec::<u32>(&cas, 1).unwrap()[0]), total);
        let last = d.download_vec::<i32>(&exch, 1).unwrap()[0];
        assert!((0..total as i32).contains(&last));
    }
}

#[test]
fn static_and_dynamic_shared_memory() {
    let c = Counter::new("static_and_dynamic_shared_memory");
    let d = dev();
    let (blocks, n) = (50u32, 256u32);
    let input: Vec<i32> = lcg(3, (blocks * n) as usize)
        .iter()
        .map(|&r| (r % 1000) as i32 - 500)
        .collect();
    let ib = d.alloc_from(&input).unwrap();
    let out = d.alloc_zeroed::<i32>(blocks as usize).unwrap();
    c.ok(
        &d,
        "rq_emu_test_static_shared",
        LaunchConfig::linear(blocks, n),
        &[Buf(&ib), Buf(&out)],
    );
    let got: Vec<i32> = d.download_vec(&out, blocks as usize).unwrap();
    for b in 0..blocks as usize {
        assert_eq!(
            got[b],
            input[b * n as usize..(b + 1) * n as usize]
                .iter()
                .sum::<i32>()
        );
    }

    let (blocks, n) = (9u32, 128u32);
    let total = (blocks * n) as usize;
    let input: Vec<f32> = (0..total).map(|i| i as f32 * 0.5).collect();
    let ib = d.alloc_from(&input).unwrap();
    let out = d.alloc_zeroed::<f32>(total).unwrap();
    let idx = d.alloc_zeroed::<i32>(total).unwrap();
    let cfg = LaunchConfig::linear(blocks, n).with_shared(n * 8);
    c.ok(
        &d,
        "rq_emu_test_dynamic_shared",
        cfg,
        &[Buf(&ib), Buf(&out), Buf(&idx)],
    );
    let got: Vec<f32> = d.download_vec(&out, total).unwrap();
    let gidx: Vec<i32> = d.download_vec(&idx, total).unwrap();
    for b in 0..blocks as usize {
        for t in 0..n as usize {
            let nn = n as usize;
            assert_eq!(got[b * nn + t], input[b * nn + nn - 1 - t]);
            assert_eq!(gidx[b * nn + t], (nn - 1 - t) as i32);
        }
    }
}

#[test]
fn static_shared_is_private_to_each_block() {
    let c = Counter::new("static_shared_is_private_to_each_block");
    for workers in [2, 3] {
        let d = EmuDevice::with_workers(workers).with_order(dev().order());
        let out = d.alloc_zeroed::<i32>(1).unwrap();
        c.ok(
            &d,
            "rq_emu_test_shared_private",
            LaunchConfig::linear(400, 64),
            &[Buf(&out)],
        );
        assert_eq!(d.download_vec::<i32>(&out, 1).unwrap()[0], 0);
    }
}

#[test]
fn geometry_and_barrier_variants() {
    let c = Counter::new("geometry_and_barrier_variants");
    let d = dev();
    let cfg = LaunchConfig {
        grid: [3, 2, 2],
        block: [4, 4, 2],
        shared_bytes: 0,
    };
    let total = 12 * 32;
    let out = d.alloc_zeroed::<u32>(total * 12).unwrap();
    c.ok(&d, "rq_emu_test_geometry", cfg, &[Buf(&out)]);
    let got: Vec<u32> = d.download_vec(&out, total * 12).unwrap();
    for bz in 0..2 {
        for by in 0..2 {
            for bx in 0..3 {
                for tz in 0..2 {
                    for ty in 0..4 {
                        for tx in 0..4 {
                            let block = bx + 3 * (by + 2 * bz);
                            let thread = tx + 4 * (ty + 4 * tz);
                            let g = (block * 32 + thread) as usize;
                            let want = [tx, ty, tz, bx, by, bz, 4, 4, 2, 3, 2, 2];
                            assert_eq!(&got[g * 12..g * 12 + 12], &want);
                        }
                    }
                }
            }
        }
    }

    let out = d.alloc_zeroed::<i32>(8).unwrap();
    c.ok(
        &d,
        "rq_emu_test_sync_variants",
        LaunchConfig::linear(2, 96),
        &[Buf(&out)],
    );
    assert_eq!(
        d.download_vec::<i32>(&out, 8).unwrap(),
        vec![32, 0, 1, 1, 32, 0, 1, 1]
    );
}

#[test]
fn many_blocks() {
    let c = Counter::new("many_blocks");
    let d = dev();
    let blocks = 20_000u32;
    let out = d.alloc_zeroed::<f32>(blocks as usize).unwrap();
    c.ok(
        &d,
        "rq_emu_test_switch_bench",
        LaunchConfig::linear(blocks, 32),
        &[Buf(&out)],
    );
    let got: Vec<f32> = d.download_vec(&out, blocks as usize).unwrap();
    // One warp: each lane holds the sum 0 + 1 + … + 31 after the butterfly.
    assert!(got.iter().all(|&v| v == 496.0));
}

#[test]
fn half_and_bfloat16_conversions() {
    let c = Counter::new("half_and_bfloat16_conversions");
    let d = dev();
    let mut vals: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.5,
        65504.0,
        65520.0,
        65519.0,
        1e-8,
        5.96e-8,
        6.1e-5,
        3.0e-5,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        f32::INFINITY,
        -f32::INFINITY,
        f32::NAN,
        1.0e30,
        1234.5678,
        f32::MIN_POSITIVE,
    ];
    vals.extend(
        lcg(11, 2000)
            .iter()
            .map(|&r| f32::from_bits(r.rotate_left(3))),
    );
    let n = vals.len();
    let ib = d.alloc_from(&vals).unwrap();
    let h = d.alloc_zeroed::<u16>(n).unwrap();
    let b = d.alloc_zeroed::<u16>(n).unwrap();
    let hf = d.alloc_zeroed::<f32>(n).unwrap();
    let bf = d.alloc_zeroed::<f32>(n).unwrap();
    let blocks = n.div_ceil(128) as u32;
    c.ok(
        &d,
        "rq_emu_test_half",
        LaunchConfig::linear(blocks, 128),
        &[
            Buf(&ib),
            Buf(&h),
            Buf(&b),
            Buf(&hf),
            Buf(&bf),
            I32(n as i32),
        ],
    );
    let (h, b) = (
        d.download_vec::<u16>(&h, n).unwrap(),
        d.download_vec::<u16>(&b, n).unwrap(),
    );
    let (hf, bf) = (
        d.download_vec::<f32>(&hf, n).unwrap(),
        d.download_vec::<f32>(&bf, n).unwrap(),
    );
    for (i, &v) in vals.iter().enumerate() {
        let wh = half::f16::from_f32(v);
        let wb = half::bf16::from_f32(v);
        if v.is_nan() {
            assert!(half::f16::from_bits(h[i]).is_nan() && half::bf16::from_bits(b[i]).is_nan());
            assert!(hf[i].is_nan() && bf[i].is_nan());
            continue;
        }
        assert_eq!(h[i], wh.to_bits(), "f16 of {v:e}");
        assert_eq!(b[i], wb.to_bits(), "bf16 of {v:e}");
        assert_eq!(
            hf[i].to_bits(),
            wh.to_f32().to_bits(),
            "f16 round trip of {v:e}"
        );
        assert_eq!(
            bf[i].to_bits(),
            wb.to_f32().to_bits(),
            "bf16 round trip of {v:e}"
        );
    }
}

#[test]
fn bit_and_math_intrinsics() {
    let c = Counter::new("bit_and_math_intrinsics");
    let d = dev();
    let mut vals = vec![0u32, 1, 0x8000_0000, 0xffff_ffff, 1000, 999, 0x0001_0000];
    vals.extend(lcg(5, 200));
    let n = vals.len();
    let ib = d.alloc_from(&vals).unwrap();
    let out = d.alloc_zeroed::<u32>(n * 9).unwrap();
    c.ok(
        &d,
        "rq_emu_test_intrinsics",
        LaunchConfig::linear(n.div_ceil(64) as u32, 64),
        &[Buf(&ib), Buf(&out), I32(n as i32)],
    );
    let got: Vec<u32> = d.download_vec(&out, n * 9).unwrap();
    for (i, &x) in vals.iter().enumerate() {
        let f = f32::from_bits(x & 0x3fff_ffff);
        // __byte_perm(x, !x, 0x7340): bytes x0, !x0, x3, !x3 (low to high).
        let (b, nb) = (x.to_le_bytes(), (!x).to_le_bytes());
        let perm = u32::from_le_bytes([b[0], nb[0], b[3], nb[3]]);
        let want = [
            x.count_ones(),
            x.leading_zeros(),
            if x == 0 { 0 } else { x.trailing_zeros() + 1 },
            x,
            ((x & 0xffff) as f32).to_bits(),
            x.max(1000) - x.min(1000),
            // fmaxf(·, -INFINITY) is the identity on the non-NaN result of fminf.
            f.min(2.0).to_bits(),
            std::f32::consts::E.to_bits(),
            perm,
        ];
        let g = &got[i * 9..i * 9 + 9];
        assert_eq!(&g[..6], &want[..6], "x = {x:#x}");
        // fminf of a NaN operand returns the other one, as Rust's `min` does.
        assert_eq!(g[6], want[6], "x = {x:#x}");
        assert!((f32::from_bits(g[7]) - std::f32::consts::E).abs() < 1e-6);
        assert_eq!(g[8], want[8], "__byte_perm, x = {x:#x}");
    }
}

#[test]
fn arguments_are_checked_and_passed() {
    let c = Counter::new("arguments_are_checked_and_passed");
    let d = dev();
    let out = d.alloc_zeroed::<u64>(5).unwrap();
    let args = [
        Buf(&out),
        I32(-5),
        U32(0xdead_beef),
        I64(-(1 << 40)),
        U64(u64::MAX - 1),
        F32(-2.5),
    ];
    c.ok(&d, "rq_emu_test_args", LaunchConfig::linear(1, 1), &args);
    let got: Vec<u64> = d.download_vec(&out, 5).unwrap();
    assert_eq!(
        got,
        vec![
            (-5i64) as u64,
            0xdead_beef,
            (-(1i64 << 40)) as u64,
            u64::MAX - 1,
            u64::from((-2.5f32).to_bits())
        ]
    );

    let wrong = d.launch(
        "rq_emu_test_args",
        LaunchConfig::linear(1, 1),
        &[Buf(&out), F32(1.0)],
    );
    let msg = format!("{}", wrong.unwrap_err());
    assert!(
        msg.contains("takes (pointer, int, unsigned, int64, uint64, float)"),
        "{msg}"
    );
    let unknown = d.launch("no_such_kernel", LaunchConfig::linear(1, 1), &[]);
    assert!(format!("{}", unknown.unwrap_err()).contains("no kernel named `no_such_kernel`"));
    for cfg in [
        LaunchConfig::linear(0, 32),
        LaunchConfig::linear(1, 2048),
        LaunchConfig::linear(1, 32).with_shared(1 << 20),
    ] {
        let e = d
            .launch("rq_emu_test_switch_bench", cfg, &[Buf(&out)])
            .unwrap_err();
        assert!(
            format!("{e}").contains("invalid launch configuration"),
            "{e}"
        );
    }
    let mut small = d.alloc(4).unwrap();
    assert!(d.upload(&mut small, &[0u8; 5]).is_err());
    assert!(d.download(&small, &mut [0u8; 5]).is_err());
    // upload_at places bytes at an offset and refuses to run past the end.
    d.upload_at(&mut small, 1, &[7, 8]).unwrap();
    let mut back = [9u8; 4];
    d.download(&small, &mut back).unwrap();
    assert_eq!(back, [0, 7, 8, 0]);
    assert!(d.upload_at(&mut small, 3, &[1, 2]).is_err());
    assert!(d.upload_at(&mut small, usize::MAX, &[1]).is_err());
    assert_eq!(small.as_ptr() as usize % 256, 0);
}

#[test]
fn misuse_is_reported_with_kernel_block_and_thread() {
    let c = Counter::new("misuse_is_reported_with_kernel_block_and_thread");
    // Forward order: the reported thread is the first to reach the misuse.
    let d = EmuDevice::with_workers(2).with_order(FiberOrder::Forward);
    let out = d.alloc_zeroed::<i32>(4096).unwrap();

    let m = c.err(
        &d,
        "rq_emu_test_partial_mask",
        LaunchConfig::linear(4, 64),
        &[Buf(&out)],
    );
    assert!(
        m.contains("block (2, 0, 0) thread (0, 0, 0)") && m.contains("mask 0x0000ffff"),
        "{m}"
    );

    let m = c.err(
        &d,
        "rq_emu_test_divergent_barrier",
        LaunchConfig::linear(1, 64),
        &[Buf(&out)],
    );
    assert!(
        m.contains("thread (16, 0, 0)")
            && m.contains("16 threads of its block wait at __syncthreads"),
        "{m}"
    );

    let m = c.err(
        &d,
        "rq_emu_test_early_exit_barrier",
        LaunchConfig::linear(3, 64),
        &[Buf(&out)],
    );
    assert!(
        m.contains("block (0, 0, 0) thread (37, 0, 0)") && m.contains("exited while 37 threads"),
        "{m}"
    );

    let m = c.err(
        &d,
        "rq_emu_test_warp_divergent",
        LaunchConfig::linear(1, 32),
        &[Buf(&out)],
    );
    assert!(
        m.contains("thread (16, 0, 0)") && m.contains("__ballot_sync") && m.contains("__shfl_sync"),
        "{m}"
    );

    let m = c.err(
        &d,
        "rq_emu_test_warp_vs_barrier",
        LaunchConfig::linear(1, 64),
        &[Buf(&out)],
    );
    assert!(
        m.contains("thread (0, 0, 0)") && m.contains("deadlock") && m.contains("lane 8"),
        "{m}"
    );

    let m = c.err(
        &d,
        "rq_emu_test_partial_warp",
        LaunchConfig::linear(1, 48),
        &[Buf(&out)],
    );
    assert!(m.contains("block of 48 threads"), "{m}");

    let input = d.alloc_from(&[1.0f32; 4 * 64 + 1]).unwrap();
    let m = c.err(
        &d,
        "rq_emu_test_async_misaligned",
        LaunchConfig::linear(1, 64),
        &[Buf(&input), Buf(&out)],
    );
    assert!(
        m.contains("thread (5, 0, 0)") && m.contains("must be aligned to the size"),
        "{m}"
    );

    if EmuDevice::bounds_checks() {
        let out_f = d.alloc_zeroed::<f32>(64).unwrap();
        let cfg = LaunchConfig::linear(1, 64).with_shared(64 * 4);
        let m = c.err(&d, "rq_emu_test_oob_dynamic", cfg, &[Buf(&out_f)]);
        assert!(
            m.contains("thread (63, 0, 0)") && m.contains("element 64 of 64"),
            "{m}"
        );
    } else {
        println!("emu: dynamic shared memory bounds checks are off in this build; skipped");
    }

    // The device (and its reused fiber stacks) still works after the failures.
    let (blocks, n) = (4u32, 256u32);
    let r = d.alloc_zeroed::<i32>((blocks * n) as usize).unwrap();
    c.ok(
        &d,
        "rq_emu_test_barrier_order",
        LaunchConfig::linear(blocks, n),
        &[Buf(&r)],
    );
    let got: Vec<i32> = d.download_vec(&r, (blocks * n) as usize).unwrap();
    assert_eq!(got[5], 11);
}

/// Runs a reduction twin and tells whether it matches the plain Rust sums.
fn reduction_matches(c: &Counter, d: &EmuDevice, kernel: &str, per: usize) -> bool {
    let (blocks, n) = (16u32, 256u32);
    let total = (blocks * n) as usize;
    let input: Vec<f32> = lcg(9, total).iter().map(|&r| (r % 17) as f32).collect();
    let ib = d.alloc_from(&input).unwrap();
    let outputs = total / per;
    let out = d.alloc_zeroed::<f32>(outputs).unwrap();
    c.ok(
        d,
        kernel,
        LaunchConfig::linear(blocks, n),
        &[Buf(&ib), Buf(&out)],
    );
    let got: Vec<f32> = d.download_vec(&out, outputs).unwrap();
    got.iter()
        .enumerate()
        .all(|(i, &g)| g == input[i * per..(i + 1) * per].iter().sum::<f32>())
}

/// Whether the kernels run under ThreadSanitizer (`scripts/emu-tsan.sh`), which reports the
/// deliberately racy twins (and stops the process) instead of letting them compute.
fn skip_racy_under_tsan(test: &str) -> bool {
    if cfg!(rq_emu_tsan) {
        println!("SKIP: {test} runs racy kernels on purpose; under ThreadSanitizer the probes of tsan_reports_races check them");
    }
    cfg!(rq_emu_tsan)
}

#[test]
fn broken_twins_are_caught() {
    if skip_racy_under_tsan("broken_twins_are_caught") {
        return;
    }
    let c = Counter::new("broken_twins_are_caught");
    for order in [FiberOrder::Forward, FiberOrder::Reverse] {
        let d = EmuDevice::with_workers(2).with_order(order);
        assert!(reduction_matches(&c, &d, "rq_emu_test_reduce_smem_ok", 256));
        assert!(reduction_matches(&c, &d, "rq_emu_test_reduce_shfl_ok", 32));
        assert!(!reduction_matches(
            &c,
            &d,
            "rq_emu_test_reduce_shfl_broken",
            32
        ));
        assert!(neighbour_matches(&c, &d, "rq_emu_test_neighbour_ok"));
    }
    let forward = EmuDevice::with_workers(2).with_order(FiberOrder::Forward);
    let reverse = EmuDevice::with_workers(2).with_order(FiberOrder::Reverse);
    // A missing barrier before a tree reduction: thread order runs thread 0 into the
    // reduction before the upper half has written its values.
    assert!(!reduction_matches(
        &c,
        &forward,
        "rq_emu_test_reduce_smem_broken",
        256
    ));
    // A missing barrier before reading the left neighbour: thread order hides it (the
    // neighbour always ran first), reverse order catches it.
    assert!(neighbour_matches(
        &c,
        &forward,
        "rq_emu_test_neighbour_broken"
    ));
    assert!(!neighbour_matches(
        &c,
        &reverse,
        "rq_emu_test_neighbour_broken"
    ));
}

/// Runs a neighbour-read twin and tells whether it matches plain Rust.
fn neighbour_matches(c: &Counter, d: &EmuDevice, kernel: &str) -> bool {
    let (blocks, n) = (8usize, 256usize);
    let input: Vec<f32> = lcg(13, blocks * n)
        .iter()
        .map(|&r| (r % 1000) as f32)
        .collect();
    let ib = d.alloc_from(&input).unwrap();
    let out = d.alloc_zeroed::<f32>(blocks * n).unwrap();
    c.ok(
        d,
        kernel,
        LaunchConfig::linear(blocks as u32, n as u32),
        &[Buf(&ib), Buf(&out)],
    );
    let got: Vec<f32> = d.download_vec(&out, blocks * n).unwrap();
    (0..blocks * n).all(|g| got[g] == if g % n > 0 { input[g - 1] } else { 0.0 })
}

/// Runs `rq_emu_test_mma_tf32` on A (16 × 8), B (8 × 8) and C (16 × 8); returns D.
fn mma_tf32(c: &Counter, d: &EmuDevice, a: &[f32], b: &[f32], acc: &[f32]) -> Vec<f32> {
    let (ab, bb, cb) = (
        d.alloc_from(a).unwrap(),
        d.alloc_from(b).unwrap(),
        d.alloc_from(acc).unwrap(),
    );
    let out = d.alloc_zeroed::<f32>(128).unwrap();
    c.ok(
        d,
        "rq_emu_test_mma_tf32",
        LaunchConfig::linear(1, 32),
        &[Buf(&ab), Buf(&bb), Buf(&cb), Buf(&out)],
    );
    d.download_vec(&out, 128).unwrap()
}

#[test]
fn mma_tf32_layouts_and_accumulation() {
    let c = Counter::new("mma_tf32_layouts_and_accumulation");
    let d = dev();
    // Layouts: small integers, so every sum is exact whatever the accumulation.
    let a: Vec<f32> = (0..128)
        .map(|i| ((i * 5 + i / 8) % 7) as f32 - 3.0)
        .collect();
    let b: Vec<f32> = (0..64)
        .map(|i| ((i * 3 + i / 8) % 5) as f32 - 2.0)
        .collect();
    let acc: Vec<f32> = (0..128).map(|i| (i % 11) as f32).collect();
    let got = mma_tf32(&c, &d, &a, &b, &acc);
    for i in 0..16 {
        for j in 0..8 {
            let want = acc[i * 8 + j] + (0..8).map(|k| a[i * 8 + k] * b[k * 8 + j]).sum::<f32>();
            assert_eq!(got[i * 8 + j], want, "D[{i}][{j}]");
        }
    }
    // Accumulation at the pessimistic end: an addend below the largest addend's f32 grid is
    // truncated away (round to nearest would give 1 + 2^-23), the sum truncated toward zero
    // (-1 - 0.75·2^-23 gives -1), and an overflow is inf. Operands are truncated to TF32:
    // 1 + 2^-12 reads as 1.
    let unit = |v: f32| {
        let mut m = vec![0.0f32; 64];
        m[0] = v;
        m
    };
    let small = 0.75 * 2f32.powi(-23);
    for (a00, b00, c00, want) in [
        (small, 1.0, 1.0, 1.0),
        (-small, 1.0, -1.0, -1.0),
        (2f32.powi(100), 2f32.powi(27), 2f32.powi(127), f32::INFINITY),
        (1.0 + 2f32.powi(-12), 1.0, 0.0, 1.0),
    ] {
        let mut a = vec![0.0f32; 128];
        a[0] = a00;
        let mut acc = vec![0.0f32; 128];
        acc[0] = c00;
        let got = mma_tf32(&c, &d, &a, &unit(b00), &acc);
        assert_eq!(got[0], want, "{a00:e} * {b00:e} + {c00:e}");
    }
}

/// Runs `rq_emu_test_async_rounds` (`variant`: 0 correct, 1 no waits, 2 no barrier before the
/// second round's copies) and tells whether both rounds read the right neighbours' values.
fn async_rounds_match(c: &Counter, d: &EmuDevice, variant: i32) -> bool {
    let (blocks, n) = (6usize, 256usize);
    let row = 4 * blocks * n;
    let input: Vec<f32> = lcg(17 + variant as u64, 2 * row)
        .iter()
        .map(|&r| (r % 100_000) as f32 + 1.0)
        .collect();
    let ib = d.alloc_from(&input).unwrap();
    let out = d.alloc_zeroed::<f32>(2 * row).unwrap();
    c.ok(
        d,
        "rq_emu_test_async_rounds",
        LaunchConfig::linear(blocks as u32, n as u32),
        &[Buf(&ib), Buf(&out), I32(variant)],
    );
    let got: Vec<f32> = d.download_vec(&out, 2 * row).unwrap();
    (0..2 * blocks * n).all(|slot| {
        let (b, t) = (slot / n, slot % n);
        let from = 4 * (b * n + (t + 1) % n);
        got[4 * slot..4 * slot + 4] == input[from..from + 4]
    })
}

#[test]
fn async_copies_land_at_either_end() {
    if skip_racy_under_tsan("async_copies_land_at_either_end") {
        return;
    }
    let c = Counter::new("async_copies_land_at_either_end");
    for order in [FiberOrder::Forward, FiberOrder::Reverse] {
        let at_wait = EmuDevice::with_workers(2).with_order(order);
        assert_eq!(at_wait.async_copies(), AsyncCopies::AtWait);
        let at_issue = EmuDevice::with_workers(2)
            .with_order(order)
            .with_async_copies(AsyncCopies::AtIssue);
        assert!(async_rounds_match(&c, &at_wait, 0), "{at_wait:?}");
        assert!(async_rounds_match(&c, &at_issue, 0), "{at_issue:?}");
        // Reading without waiting: landing at the wait shows the old contents; landing at
        // issue hides the bug.
        assert!(!async_rounds_match(&c, &at_wait, 1), "{at_wait:?}");
        assert!(async_rounds_match(&c, &at_issue, 1), "{at_issue:?}");
        // Copying into slots still being read: landing at issue overwrites them under the
        // readers (in either order: the wrap-around neighbour, or every left neighbour);
        // landing at the wait, after the barrier, hides the bug.
        assert!(!async_rounds_match(&c, &at_issue, 2), "{at_issue:?}");
        assert!(async_rounds_match(&c, &at_wait, 2), "{at_wait:?}");
    }
}

/// Runs `rq_emu_test_warp_exchange` (`variant`: 0 with `__syncwarp`, 1 with a shuffle in its
/// place) and tells whether every lane read its partner's value.
fn warp_exchange_matches(c: &Counter, d: &EmuDevice, variant: i32) -> bool {
    let (blocks, n) = (5usize, 256usize);
    let input: Vec<f32> = lcg(23, blocks * n).iter().map(|&r| r as f32).collect();
    let ib = d.alloc_from(&input).unwrap();
    let out = d.alloc_zeroed::<f32>(blocks * n).unwrap();
    c.ok(
        d,
        "rq_emu_test_warp_exchange",
        LaunchConfig::linear(blocks as u32, n as u32),
        &[Buf(&ib), Buf(&out), I32(variant)],
    );
    let got: Vec<f32> = d.download_vec(&out, blocks * n).unwrap();
    (0..blocks * n).all(|g| got[g] == input[g ^ 1])
}

/// A shuffle standing in for `__syncwarp` computes the right values in the emulator, in
/// either fiber order: the race it leaves is visible only to ThreadSanitizer
/// (`tsan_reports_races`).
#[test]
fn a_missing_syncwarp_escapes_the_fiber_orders() {
    let c = Counter::new("a_missing_syncwarp_escapes_the_fiber_orders");
    for order in [FiberOrder::Forward, FiberOrder::Reverse] {
        let d = EmuDevice::with_workers(2).with_order(order);
        assert!(warp_exchange_matches(&c, &d, 0), "{d:?}");
        if !cfg!(rq_emu_tsan) {
            assert!(warp_exchange_matches(&c, &d, 1), "{d:?}");
        }
    }
}

/// Races ThreadSanitizer must report, one per run: `scripts/emu-tsan.sh` runs this test with
/// `RQTREE_EMU_TSAN_PROBE` set to `barrier` (a read of a neighbour's shared-memory write with
/// no `__syncthreads` between, in the fiber order that computes the right values), `syncwarp`
/// (a warp exchange ordered by a shuffle instead of `__syncwarp`) or `async` (asynchronous
/// copies landing in slots other threads may still read), and expects ThreadSanitizer's
/// data-race report. Elsewhere it skips.
#[test]
fn tsan_reports_races() {
    let Some(probe) = std::env::var_os("RQTREE_EMU_TSAN_PROBE") else {
        println!("SKIP: the race probes run only under scripts/emu-tsan.sh");
        return;
    };
    let c = Counter::new("tsan_reports_races");
    let d = EmuDevice::with_workers(2).with_order(FiberOrder::Forward);
    match probe.to_str() {
        Some("barrier") => {
            neighbour_matches(&c, &d, "rq_emu_test_neighbour_broken");
        }
        Some("syncwarp") => {
            warp_exchange_matches(&c, &d, 1);
        }
        Some("async") => {
            async_rounds_match(&c, &d, 2);
        }
        other => panic!("RQTREE_EMU_TSAN_PROBE={other:?}: expected barrier, syncwarp or async"),
    }
}

/// Scheduler throughput: 2000 blocks of 256 threads, each a 5-step shuffle reduction and one
/// barrier (DESIGN §5's probe). Prints context switches per second.
#[test]
fn switch_rate() {
    let c = Counter::new("switch_rate");
    let blocks = 2000u32;
    for workers in [1, 2] {
        let d = EmuDevice::with_workers(workers);
        let out = d.alloc_zeroed::<f32>(blocks as usize).unwrap();
        // Warm-up: allocates the fiber stacks.
        c.ok(
            &d,
            "rq_emu_test_switch_bench",
            LaunchConfig::linear(workers as u32, 256),
            &[Buf(&out)],
        );
        let before = d.context_switches();
        let t = std::time::Instant::now();
        c.ok(
            &d,
            "rq_emu_test_switch_bench",
            LaunchConfig::linear(blocks, 256),
            &[Buf(&out)],
        );
        let secs = t.elapsed().as_secs_f64();
        let switches = d.context_switches() - before;
        let got: Vec<f32> = d.download_vec(&out, blocks as usize).unwrap();
        assert!(got.iter().all(|&v| v == 32640.0));
        println!(
            "emu: switch_rate workers={workers}: {switches} switches in {:.3} s = {:.1} M/s, {:.1} µs per block",
            secs,
            switches as f64 / secs / 1e6,
            secs * 1e6 / f64::from(blocks) * workers as f64
        );
    }
}

/// A kernel writing past the end of its buffer: AddressSanitizer must abort the process.
/// `scripts/emu-asan.sh` runs it with `RQTREE_EMU_ASAN_PROBE=1` and expects the
/// `heap-buffer-overflow` report; elsewhere it would corrupt the heap, so it skips.
#[test]
fn asan_catches_heap_overflow() {
    if std::env::var_os("RQTREE_EMU_ASAN_PROBE").is_none() {
        println!("SKIP: the out-of-bounds probe runs only under scripts/emu-asan.sh");
        return;
    }
    let d = dev();
    let n = 64usize;
    let out = d.alloc_zeroed::<i32>(n).unwrap();
    d.launch(
        "rq_emu_test_heap_overflow",
        LaunchConfig::linear(1, 32),
        &[Buf(&out), I32(n as i32)],
    )
    .unwrap();
}

/// Out-of-bounds shared-memory writes no check of the emulator sees, one per run:
/// `scripts/emu-asan.sh` runs this test with `RQTREE_EMU_SHARED_PROBE` set to `static` (one
/// element past a static `__shared__` array: a plain static under ASan, with redzones) or
/// `dynamic` (the byte just past the launch's dynamic shared memory, through a raw pointer:
/// the rest of the worker's buffer is poisoned) and expects the report. The same launches
/// within bounds must pass. Elsewhere it skips (the writes would corrupt memory).
#[test]
fn asan_catches_shared_overflow() {
    let Some(probe) = std::env::var_os("RQTREE_EMU_SHARED_PROBE") else {
        println!("SKIP: the shared-memory overflow probes run only under scripts/emu-asan.sh");
        return;
    };
    let d = dev();
    let out = d.alloc_zeroed::<i32>(64).unwrap();
    let (kernel, shared, inside, outside) = match probe.to_str() {
        Some("static") => ("rq_emu_test_static_shared_overflow", 0, 0, 1),
        Some("dynamic") => ("rq_emu_test_dynamic_shared_overflow", 100, 99, 100),
        other => panic!("RQTREE_EMU_SHARED_PROBE={other:?}: expected static or dynamic"),
    };
    let cfg = LaunchConfig {
        shared_bytes: shared,
        ..LaunchConfig::linear(1, 64)
    };
    d.launch(kernel, cfg, &[Buf(&out), I32(inside)]).unwrap();
    d.launch(kernel, cfg, &[Buf(&out), I32(outside)]).unwrap();
}

/// A kernel loading a 16-byte vector from an address that is not 16-byte aligned (a GPU
/// faults): the alignment sanitizer must stop the process. `scripts/emu-asan.sh` runs it with
/// `RQTREE_EMU_ALIGN_PROBE=1` and expects the report; elsewhere x86 loads it silently, so it
/// skips.
#[test]
fn ubsan_catches_misaligned_vector() {
    if std::env::var_os("RQTREE_EMU_ALIGN_PROBE").is_none() {
        println!("SKIP: the misaligned-load probe runs only under scripts/emu-asan.sh");
        return;
    }
    let d = dev();
    let input = d.alloc_from(&[1.0f32; 8]).unwrap();
    let out = d.alloc_zeroed::<f32>(32).unwrap();
    d.launch(
        "rq_emu_test_misaligned_vector",
        LaunchConfig::linear(1, 32),
        &[Buf(&input), Buf(&out)],
    )
    .unwrap();
}
