//! Measures the emu scheduler: `blocks` blocks of 256 threads, each a 5-step shuffle
//! reduction and one barrier (DESIGN §5's probe), on 1 and on `workers` worker threads.
//!
//!     cargo run --release --example emu_switch_rate -- [blocks] [workers]

use rqtree::device::emu::EmuDevice;
use rqtree::device::{Device, DeviceExt, KernelArg, LaunchConfig};

fn main() -> rqtree::Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u32>().ok());
    let blocks = args.next().flatten().unwrap_or(2000).max(1);
    let workers = args.next().flatten().unwrap_or(2).max(1);
    for w in [1, workers] {
        let dev = EmuDevice::with_workers(w as usize);
        let out = dev.alloc_zeroed::<f32>(blocks as usize)?;
        let args = [KernelArg::Buf(&out)];
        // Warm-up: every worker allocates its fiber stacks.
        dev.launch(
            "rq_emu_test_switch_bench",
            LaunchConfig::linear(w * 4, 256),
            &args,
        )?;
        let before = dev.context_switches();
        let t = std::time::Instant::now();
        dev.launch(
            "rq_emu_test_switch_bench",
            LaunchConfig::linear(blocks, 256),
            &args,
        )?;
        let secs = t.elapsed().as_secs_f64();
        let resumes = dev.context_switches() - before;
        println!(
            "workers {w}: {blocks} blocks x 256 threads in {:.1} ms: {resumes} fiber resumes, \
             {:.1} M resumes/s, {:.1} us per block per worker",
            secs * 1e3,
            resumes as f64 / secs / 1e6,
            secs * 1e6 * f64::from(w) / f64::from(blocks)
        );
    }
    Ok(())
}
