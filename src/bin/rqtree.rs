//! The `rqtree` command line (DESIGN §9).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use rqtree::backend::{self, Backend, BackendKind, OpenOptions, Resident};
use rqtree::eval::recall_at;
use rqtree::index::build::{build, BuildOptions};
use rqtree::index::codebook_file::{read_codebooks, write_codebooks};
use rqtree::index::kmeans::KMeansOptions;
use rqtree::index::stats::{depth_stats, reconstruction_mse};
use rqtree::index::{file, EmbeddingKind, Index};
use rqtree::learn::{learn, LearnOptions, Supervision};
use rqtree::metric::Metric;
use rqtree::search::{search, Rerank, SearchParams};
use rqtree::topk::{check_result_size, NO_ID};
use rqtree::ttt::{self, ttt_pairs};
use rqtree::{bench, demo, npy, ops, Error, Matrix, Result};

#[derive(Parser)]
#[command(
    name = "rqtree",
    version,
    about = "Learned hierarchical retrieval indexes: build, search, evaluate"
)]
struct Cli {
    /// Worker threads for the CPU backends: the reference backend's pool and the emu
    /// backend's block workers, overriding RQTREE_EMU_WORKERS (default, or 0: all cores).
    #[arg(long, global = true, help_heading = "Global options")]
    threads: Option<usize>,
    /// emu/cuda: screen codewords for the greedy assignment and encoding, and items for the
    /// exact top-k, on the tensor cores (TF32; the same results, exact, at another speed).
    #[arg(long, global = true, help_heading = "Global options")]
    tensor_cores: bool,
    /// emu/cuda: the fused lookup + top-k kernel: auto (the scan over long candidate ranges,
    /// else the range walk), walk or scan (the same results at another speed).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        default_value = "auto"
    )]
    fused_kernel: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build an index from item embeddings (.npy) and optional codebooks.
    Build(BuildArgs),
    /// Search a batch of queries; writes ids.npy (B × k, i64) and scores.npy (B × k, f32).
    Search(SearchArgs),
    /// Recall@k against exact search (or a ground-truth file) and queries per second.
    Eval(EvalArgs),
    /// Describe an index file: sizes and per-level statistics.
    Info {
        /// The index file.
        index: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Self-contained run: seeded data → index → search → report.
    Demo {
        /// Backend: auto, reference, emu or cuda.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Learn codebooks: residual k-means, then joint soft training (DESIGN §6).
    Learn(LearnArgs),
    /// Test-time-training data: (user, node) pairs from engagements (DESIGN §7).
    Ttt(TttArgs),
    /// Kernel and end-to-end timings on seeded synthetic data.
    Bench {
        /// Backend: auto, reference, emu or cuda.
        #[arg(long, default_value = "auto")]
        backend: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Smaller problem sizes (for smoke runs).
        #[arg(long)]
        quick: bool,
        /// The target sizes (GPU-sized; seeded random-tree indexes).
        #[arg(long, conflicts_with = "quick")]
        targets: bool,
        /// Run only these groups of operations, comma-separated: assign, fused, topk, exact,
        /// search (lookup_tables, traverse, search).
        #[arg(long, default_value = "assign,fused,topk,exact,search")]
        only: bench::Groups,
    },
}

#[derive(Args)]
struct BuildArgs {
    /// Item embeddings, N × d, f32 or f16 .npy.
    #[arg(long)]
    items: PathBuf,
    /// Codebooks (safetensors, tensors codebook.0..L-1); default: residual k-means, whose
    /// options (--levels, --codes, --iters, --train-sample, --seed) cannot be used with this.
    #[arg(long, conflicts_with_all = ["levels", "codes", "iters", "train_sample", "seed"])]
    codebooks: Option<PathBuf>,
    /// Levels of residual k-means.
    #[arg(long, default_value_t = 2)]
    levels: usize,
    /// Codewords per level of residual k-means.
    #[arg(long, default_value_t = 256)]
    codes: usize,
    /// Lloyd iterations per level.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Rows sampled to train k-means.
    #[arg(long, default_value_t = 100_000)]
    train_sample: usize,
    /// Seed of k-means.
    #[arg(long, default_value_t = 20240601)]
    seed: u64,
    /// Encoder beam (1 = greedy).
    #[arg(long, default_value_t = 1)]
    encode_beam: usize,
    /// Metric: ip or l2.
    #[arg(long, default_value = "ip")]
    metric: String,
    /// Stored embeddings for exact re-rank: none, f16, bf16 or f32.
    #[arg(long, default_value = "f32")]
    keep_embeddings: String,
    /// Caller ids of the items (N, i64 .npy; distinct, >= 0: -1 marks empty result slots);
    /// default 0..N.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Backend for encoding and k-means.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Output index file.
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct QueryArgs {
    /// The index file.
    #[arg(long)]
    index: PathBuf,
    /// Queries, B × d, f32 or f16 .npy.
    #[arg(long)]
    queries: PathBuf,
    /// Exact re-rank: none or exact.
    #[arg(long, default_value = "none")]
    rerank: String,
    /// With --rerank exact: the shortlist re-ranked per query, best by lookup-table score,
    /// at least k (default: all candidates).
    #[arg(long)]
    rerank_k: Option<usize>,
    /// Backend: auto, reference, emu or cuda.
    #[arg(long, default_value = "auto")]
    backend: String,
}

#[derive(Args)]
struct SearchArgs {
    #[command(flatten)]
    q: QueryArgs,
    /// Results per query.
    #[arg(short = 'k', long = "k")]
    k: usize,
    /// Beam widths (nodes kept) per depth from depth 1, comma-separated, e.g. 32,256; the
    /// walk goes as many levels deep as widths are given (at most the index's levels).
    #[arg(long)]
    beam: String,
    /// Caller's level-1 scores, B × (#depth-1 nodes) .npy, replacing the level-1 table.
    #[arg(long)]
    level1_scores: Option<PathBuf>,
    /// Output ids (.npy, B × k, i64).
    #[arg(long)]
    out_ids: PathBuf,
    /// Output scores (.npy, B × k, f32).
    #[arg(long)]
    out_scores: Option<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    q: QueryArgs,
    /// Items for exact ground truth (.npy); row r has id r unless --ids is given.
    #[arg(long, conflicts_with = "gt")]
    items: Option<PathBuf>,
    /// Caller ids of --items rows.
    #[arg(long, requires = "items")]
    ids: Option<PathBuf>,
    /// Ground-truth ids, B × ≥k (.npy, i64 or i32), best first.
    #[arg(long)]
    gt: Option<PathBuf>,
    /// Recall cut-offs, e.g. 10,100.
    #[arg(short = 'k', long = "k", default_value = "10,100")]
    k: String,
    /// Beam widths per depth, as search's --beam (e.g. 32,256); repeat for several settings.
    #[arg(long, required = true)]
    beam: Vec<String>,
    /// Timed repetitions per setting, at least 1 (the best is reported).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct LearnArgs {
    /// Item embeddings, N × d, f32 or f16 .npy.
    #[arg(long)]
    items: PathBuf,
    /// Levels L.
    #[arg(long, default_value_t = 2)]
    levels: usize,
    /// Codewords per level K.
    #[arg(long, default_value_t = 256)]
    codes: usize,
    /// User embeddings, U × d (.npy), for the supervised index loss.
    #[arg(long, requires = "pairs")]
    users: Option<PathBuf>,
    /// Supervision triples, M × 3 int64 [user_row, item_row, label] (.npy).
    #[arg(long, requires = "users")]
    pairs: Option<PathBuf>,
    /// Passes over the training sample.
    #[arg(long, default_value_t = LearnOptions::default().epochs)]
    epochs: usize,
    /// Rows (and triples) per batch.
    #[arg(long, default_value_t = LearnOptions::default().batch)]
    batch: usize,
    /// Peak Adam learning rate, in units of the embedding coordinates, decayed to 0 by a
    /// cosine.
    #[arg(long, default_value_t = LearnOptions::default().lr)]
    lr: f64,
    /// Final inverse temperature α_max, in 1 / squared distance (it multiplies the logit
    /// 2<r, C[k]> − ||C[k]||²).
    #[arg(long, default_value_t = LearnOptions::default().alpha_max)]
    alpha_max: f64,
    /// Exponent p of α_t = α_max·(t/(T−1))^p at steps t = 0 … T−1.
    #[arg(long, default_value_t = LearnOptions::default().alpha_power)]
    alpha_power: f64,
    /// Floor of α as a fraction of α_max.
    #[arg(long, default_value_t = LearnOptions::default().alpha_floor)]
    alpha_floor: f64,
    /// Weight of the reconstruction error of the intermediate depths (the code prefixes that
    /// score the tree's inner nodes).
    #[arg(long, default_value_t = LearnOptions::default().prefix_weight)]
    prefix_weight: f64,
    /// Weight of the balance regulariser.
    #[arg(long, default_value_t = LearnOptions::default().balance)]
    balance: f64,
    /// Batches in the balance window.
    #[arg(long, default_value_t = LearnOptions::default().balance_window)]
    balance_window: usize,
    /// Weight of the supervised index loss.
    #[arg(long, default_value_t = LearnOptions::default().index_weight)]
    index_weight: f64,
    /// Fraction of the steps over which the index-loss weight ramps up.
    #[arg(long, default_value_t = LearnOptions::default().warmup)]
    warmup: f64,
    /// Items sampled for training.
    #[arg(long, default_value_t = LearnOptions::default().max_train)]
    train_sample: usize,
    /// Lloyd iterations per level of the k-means initialisation.
    #[arg(long, default_value_t = LearnOptions::default().kmeans_iters)]
    kmeans_iters: usize,
    /// Seed.
    #[arg(long, default_value_t = LearnOptions::default().seed)]
    seed: u64,
    /// Backend of the soft assignment and k-means: auto, reference, emu or cuda.
    #[arg(long, default_value = "reference")]
    backend: String,
    /// Output codebooks (safetensors).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
    /// Also build an index over all items with the learned codebooks and save it here.
    #[arg(long)]
    index: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TttArgs {
    /// The index file.
    #[arg(long)]
    index: PathBuf,
    /// User embeddings, U × d (.npy); user_row indexes its rows.
    #[arg(long)]
    users: PathBuf,
    /// Engagements, M × 2 int64 [user_row, item_id] (.npy).
    #[arg(long)]
    engagements: PathBuf,
    /// Depth of the emitted nodes (1..=L).
    #[arg(long, default_value_t = 2)]
    depth: usize,
    /// Minimum share of a user's engagements under a node, in (0, 1].
    #[arg(long, default_value_t = 0.5)]
    interest_rate: f64,
    /// Output, P × 4 int64 [user_row, depth, node_id, representative_item_id] (.npy).
    #[arg(short = 'o', long = "out")]
    out: PathBuf,
}

fn cmd_learn(a: &LearnArgs, o: OpenOptions) -> Result<()> {
    check_outputs(
        &[("-o", Some(&a.out)), ("--index", a.index.as_deref())],
        &[
            ("--items", Some(&a.items)),
            ("--users", a.users.as_deref()),
            ("--pairs", a.pairs.as_deref()),
        ],
    )?;
    let kind = a.backend.parse::<BackendKind>()?;
    let (be, why) = backend::open_with(kind, o)?;
    let (engine, _) = rqtree::learn::soft::open(kind)?;
    eprintln!("backend: {why}");
    let items = read_items(&a.items)?;
    let users = match &a.users {
        Some(path) => {
            let u = npy::read_matrix(path)?;
            let what = format!("users ({})", path.display());
            u.check_cols(items.cols(), &what)?;
            u.check_finite(&what)?;
            Some(u)
        }
        None => None,
    };
    let pairs = a.pairs.as_ref().map(npy::read_i64_2d).transpose()?;
    if let (Some(p), Some(path)) = (&pairs, &a.pairs) {
        if p.cols != 3 {
            return Err(Error::file(
                path,
                format!(
                    "pairs must be M x 3 [user_row, item_row, label], got {} x {}",
                    p.rows, p.cols
                ),
            ));
        }
    }
    let sup = match (&users, &pairs) {
        (Some(u), Some(p)) => Some(Supervision {
            users: u,
            pairs: &p.data,
        }),
        _ => None,
    };
    let opts = LearnOptions {
        levels: a.levels,
        codes: a.codes,
        epochs: a.epochs,
        batch: a.batch,
        lr: a.lr,
        alpha_max: a.alpha_max,
        alpha_power: a.alpha_power,
        alpha_floor: a.alpha_floor,
        prefix_weight: a.prefix_weight,
        balance: a.balance,
        balance_window: a.balance_window,
        index_weight: a.index_weight,
        warmup: a.warmup,
        seed: a.seed,
        max_train: a.train_sample,
        kmeans_iters: a.kmeans_iters,
    };
    let t = Instant::now();
    let (cbs, report) = learn(
        be.as_ref(),
        engine.as_ref(),
        &items,
        sup.as_ref(),
        &opts,
        !a.json,
    )?;
    let secs = t.elapsed().as_secs_f64();
    let index = match &a.index {
        Some(path) => Some((
            path,
            build(
                be.as_ref(),
                &items,
                None,
                Some(cbs.clone()),
                &BuildOptions::default(),
            )?,
        )),
        None => None,
    };
    // Both outputs or neither: the codebooks go to a temporary file, renamed over -o only once
    // the index is saved.
    npy::write_atomic(&a.out, |tmp| {
        write_codebooks(tmp, &cbs)?;
        match &index {
            Some((path, index)) => file::save(index, path),
            None => Ok(()),
        }
    })?;
    let built = a.index.clone();
    let epochs: Vec<_> = report
        .epochs
        .iter()
        .map(|l| {
            json!({"recon": l.recon, "prefix": l.prefix, "index": l.index,
                        "balance": l.balance, "total": l.total})
        })
        .collect();
    if a.json {
        println!(
            "{}",
            json!({"levels": cbs.levels(), "codes": cbs.sizes(), "steps": report.steps,
                   "alpha": report.alpha, "epochs": epochs, "learn_s": secs,
                   "out": a.out, "index": built})
        );
    } else {
        for (e, l) in report.epochs.iter().enumerate() {
            println!(
                "epoch {:>3}: recon {:.6} prefix {:.6} index {:.5} balance {:.5} total {:.6}",
                e + 1,
                l.recon,
                l.prefix,
                l.index,
                l.balance,
                l.total
            );
        }
        println!(
            "learned {} levels {:?} in {} steps ({:.1} s, final α {:.3e}) -> {}",
            cbs.levels(),
            cbs.sizes(),
            report.steps,
            secs,
            report.alpha,
            a.out.display()
        );
        if let Some(p) = built {
            println!("index -> {}", p.display());
        }
    }
    Ok(())
}

fn cmd_ttt(a: &TttArgs) -> Result<()> {
    check_outputs(
        &[("-o", Some(&a.out))],
        &[
            ("--index", Some(&a.index)),
            ("--users", Some(&a.users)),
            ("--engagements", Some(&a.engagements)),
        ],
    )?;
    let index = file::load(&a.index)?;
    let users = npy::read_matrix(&a.users)?;
    users.check_finite(&format!("users ({})", a.users.display()))?;
    if users.cols() != index.dim() {
        return Err(Error::file(
            &a.users,
            format!(
                "users are {} x {}, but the index's dimension is {} (the pairs are for \
                 training with these user rows)",
                users.rows(),
                users.cols(),
                index.dim()
            ),
        ));
    }
    let e = npy::read_i64_2d(&a.engagements)?;
    if e.cols != 2 {
        return Err(Error::file(
            &a.engagements,
            format!(
                "engagements must be M x 2 [user_row, item_id], got {} x {}",
                e.rows, e.cols
            ),
        ));
    }
    let pairs = ttt_pairs(&index, users.rows(), &e.data, a.depth, a.interest_rate)?;
    npy::write_i64(&a.out, pairs.len(), 4, &ttt::to_rows(&pairs))?;
    let with: std::collections::BTreeSet<i64> = pairs.iter().map(|p| p.user_row).collect();
    eprintln!(
        "{} (user, node) pairs at depth {} for {} users -> {}",
        pairs.len(),
        a.depth,
        with.len(),
        a.out.display()
    );
    Ok(())
}

fn parse_list(s: &str, what: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| {
            t.trim().parse::<usize>().map_err(|_| {
                Error::param(format!("{what} '{s}': expected comma-separated integers"))
            })
        })
        .collect()
}

fn open_backend(name: &str, o: OpenOptions) -> Result<Box<dyn Backend>> {
    let (be, why) = backend::open_with(name.parse::<BackendKind>()?, o)?;
    eprintln!("backend: {why}");
    Ok(be)
}

fn rerank_of(q: &QueryArgs) -> Result<Rerank> {
    match q.rerank.as_str() {
        "none" => {
            if q.rerank_k.is_some() {
                return Err(Error::param("--rerank-k needs --rerank exact"));
            }
            Ok(Rerank::None)
        }
        "exact" => Ok(Rerank::Exact {
            rerank_k: q.rerank_k,
        }),
        other => Err(Error::param(format!(
            "rerank '{other}': expected none or exact"
        ))),
    }
}

/// Errors, naming the index file, when exact re-ranking is asked of an index built without
/// stored embeddings.
fn check_rerank(index: &Index, path: &Path, rerank: Rerank) -> Result<()> {
    if matches!(rerank, Rerank::Exact { .. }) && index.embeddings.is_none() {
        return Err(Error::file(
            path,
            "the index stores no embeddings (built with --keep-embeddings none), which \
             --rerank exact needs: rebuild it with --keep-embeddings f32, f16 or bf16, or \
             search with --rerank none",
        ));
    }
    Ok(())
}

/// Reads the item embeddings of `build` and `learn`, checked finite; warns on stderr when the
/// matrix has fewer rows (items) than columns (dimensions), the mark of a transposed file.
fn read_items(path: &Path) -> Result<Matrix> {
    let items = npy::read_matrix(path)?;
    items.check_finite(&format!("items ({})", path.display()))?;
    if items.rows() < items.cols() {
        eprintln!(
            "warning: items ({}) are {} x {}: fewer items (rows) than dimensions (columns); \
             if the file holds the transposed matrix, save its transpose (numpy: \
             np.ascontiguousarray(x.T))",
            path.display(),
            items.rows(),
            items.cols()
        );
    }
    Ok(items)
}

fn load_queries(index: &Index, path: &Path) -> Result<Matrix> {
    let q = npy::read_matrix(path)?;
    q.check_cols(index.dim(), &format!("queries ({})", path.display()))?;
    q.check_finite(&format!("queries ({})", path.display()))?;
    Ok(q)
}

fn cmd_build(a: &BuildArgs, o: OpenOptions) -> Result<()> {
    check_outputs(
        &[("-o", Some(&a.out))],
        &[
            ("--items", Some(&a.items)),
            ("--ids", a.ids.as_deref()),
            ("--codebooks", a.codebooks.as_deref()),
        ],
    )?;
    let be = open_backend(&a.backend, o)?;
    let items = read_items(&a.items)?;
    let ids = a
        .ids
        .as_ref()
        .map(|p| read_item_ids(p, items.rows(), &a.items))
        .transpose()?;
    let codebooks = a.codebooks.as_ref().map(read_codebooks).transpose()?;
    let opts = BuildOptions {
        metric: a.metric.parse::<Metric>()?,
        keep_embeddings: a.keep_embeddings.parse::<EmbeddingKind>()?,
        encode_beam: a.encode_beam,
        kmeans: KMeansOptions {
            levels: a.levels,
            codes: a.codes,
            iters: a.iters,
            max_train: a.train_sample,
            seed: a.seed,
        },
        progress: !a.json,
    };
    let t = Instant::now();
    let index = build(be.as_ref(), &items, ids, codebooks, &opts)?;
    let secs = t.elapsed().as_secs_f64();
    file::save(&index, &a.out)?;
    let nodes: Vec<usize> = index.tree.depths.iter().map(|d| d.len()).collect();
    if a.json {
        println!(
            "{}",
            json!({"items": index.len(), "dim": index.dim(), "levels": index.levels(),
                   "codes": index.codebooks.sizes(), "nodes": nodes, "build_s": secs,
                   "out": a.out})
        );
    } else {
        println!(
            "built {} items (d = {}) into {} levels {:?}, nodes per depth {:?}, in {:.2} s -> {}",
            index.len(),
            index.dim(),
            index.levels(),
            index.codebooks.sizes(),
            nodes,
            secs,
            a.out.display()
        );
    }
    Ok(())
}

/// Reads the caller ids (`--ids`, at `path`) of the `n` rows of the items at `items`, checked as
/// an index needs them: one per row, non-negative (`-1` marks an empty result slot) and
/// distinct; an error names the file and the offending rows.
fn read_item_ids(path: &Path, n: usize, items: &Path) -> Result<Vec<i64>> {
    let ids = npy::read_ids(path)?;
    if ids.len() != n {
        return Err(Error::file(
            path,
            format!(
                "{} ids for the {n} item rows of {}: one id per row is needed",
                ids.len(),
                items.display()
            ),
        ));
    }
    if let Some(r) = ids.iter().position(|&id| id < 0) {
        return Err(Error::file(
            path,
            format!(
                "ids, row {r}: id {} is negative; item ids must be >= 0 ({NO_ID} marks an \
                 empty result slot)",
                ids[r]
            ),
        ));
    }
    let mut rows: Vec<usize> = (0..n).collect();
    rows.sort_by_key(|&r| (ids[r], r));
    if let Some(w) = rows.windows(2).find(|w| ids[w[0]] == ids[w[1]]) {
        return Err(Error::file(
            path,
            format!(
                "ids, rows {} and {}: id {} appears twice; item ids must be distinct",
                w[0], w[1], ids[w[0]]
            ),
        ));
    }
    Ok(ids)
}

/// Loads the index at `path` and keeps it resident on `be`'s device for the command's calls
/// (no host work per call; a no-op on the CPU backends).
fn load_resident(be: &dyn Backend, path: &Path) -> Result<Arc<Index>> {
    let index = Arc::new(file::load(path)?);
    be.keep_resident(Resident::Index(Arc::clone(&index)))?;
    Ok(index)
}

/// Whether the output paths `a` and `b` name the same file: equal once their folders are
/// resolved (where they exist), so that `o.npy` and `./o.npy` are one file.
fn same_output(a: &Path, b: &Path) -> bool {
    let resolve = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        match (dir.canonicalize(), p.file_name()) {
            (Ok(dir), Some(name)) => dir.join(name),
            _ => p.to_path_buf(),
        }
    };
    resolve(a) == resolve(b)
}

/// Errors, before any work, when two of a command's `outputs` name one file or an output
/// names one of its `inputs` (writing it would replace the data the command reads): each
/// path with the option that gave it.
fn check_outputs(
    outputs: &[(&str, Option<&Path>)],
    inputs: &[(&str, Option<&Path>)],
) -> Result<()> {
    let named = |v: &[(&str, Option<&Path>)]| -> Vec<(String, PathBuf)> {
        v.iter()
            .filter_map(|&(flag, p)| p.map(|p| (flag.to_string(), p.to_path_buf())))
            .collect()
    };
    let (outputs, inputs) = (named(outputs), named(inputs));
    for (i, (flag, out)) in outputs.iter().enumerate() {
        for (other, earlier) in &outputs[..i] {
            if same_output(out, earlier) {
                return Err(Error::param(format!(
                    "{flag} {} is the {other} file",
                    out.display()
                )));
            }
        }
        for (input, path) in &inputs {
            if same_output(out, path) {
                return Err(Error::param(format!(
                    "{flag} {} is the {input} input: writing it would replace what this \
                     command reads",
                    out.display()
                )));
            }
        }
    }
    Ok(())
}

fn cmd_search(a: &SearchArgs, o: OpenOptions) -> Result<()> {
    check_outputs(
        &[
            ("--out-ids", Some(&a.out_ids)),
            ("--out-scores", a.out_scores.as_deref()),
        ],
        &[
            ("--index", Some(&a.q.index)),
            ("--queries", Some(&a.q.queries)),
            ("--level1-scores", a.level1_scores.as_deref()),
        ],
    )?;
    let be = open_backend(&a.q.backend, o)?;
    let index = load_resident(be.as_ref(), &a.q.index)?;
    let rerank = rerank_of(&a.q)?;
    check_rerank(&index, &a.q.index, rerank)?;
    let queries = load_queries(&index, &a.q.queries)?;
    let level1 = a.level1_scores.as_ref().map(npy::read_matrix).transpose()?;
    let params = SearchParams {
        k: a.k,
        beams: parse_list(&a.beam, "beam")?,
        rerank,
    };
    let t = Instant::now();
    let out = search(be.as_ref(), &index, &queries, level1.as_ref(), &params)?;
    let secs = t.elapsed().as_secs_f64();
    // Both outputs or neither: the ids go to a temporary file, renamed over --out-ids only
    // once the scores are written, so a failed write leaves an earlier pair as it was.
    npy::write_atomic(&a.out_ids, |tmp| {
        npy::write_i64(tmp, out.topk.rows, out.topk.k, &out.topk.ids)?;
        match &a.out_scores {
            Some(p) => npy::write_f32(
                p,
                &Matrix::new(out.topk.rows, out.topk.k, out.topk.scores.clone())?,
            ),
            None => Ok(()),
        }
    })?;
    let cand = out.candidates.iter().sum::<usize>() as f64 / queries.rows().max(1) as f64;
    eprintln!(
        "searched {} queries in {:.3} s ({:.0} queries/s), {:.0} candidates per query",
        queries.rows(),
        secs,
        queries.rows() as f64 / secs.max(1e-9),
        cand
    );
    Ok(())
}

/// The caller's id of exact-search result row `r` (`ids` by item row), keeping the empty-slot
/// marker: with fewer items than `k` the exact top-k has empty slots.
fn item_id(ids: &[i64], r: i64) -> Result<i64> {
    if r == NO_ID {
        return Ok(NO_ID);
    }
    usize::try_from(r)
        .ok()
        .and_then(|r| ids.get(r).copied())
        .ok_or_else(|| {
            Error::index(format!(
                "exact search returned item row {r} of {}",
                ids.len()
            ))
        })
}

/// The exact top-`k` of `queries` (`B × d`) against `items` (`N × d`) as caller ids, `B × k`
/// row-major (`-1` in empty slots): `ids` (`N`, one per item row; default the rows) name the
/// items, and equal scores rank the lower caller id first (DESIGN §4), as search ranks them.
/// The exact top-k breaks ties by item row, so the items are handed to it in id order.
fn exact_truth(
    be: &dyn Backend,
    queries: &Matrix,
    items: &Matrix,
    ids: Option<Vec<i64>>,
    metric: Metric,
    k: usize,
) -> Result<Vec<i64>> {
    let Some(ids) = ids else {
        return Ok(ops::exact_topk(be, queries, items, metric, k)?.ids);
    };
    if ids.len() != items.rows() {
        return Err(Error::shape(format!(
            "{} ids for {} items",
            ids.len(),
            items.rows()
        )));
    }
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&r| ids[r]);
    let mut sorted = Matrix::zeros(items.rows(), items.cols());
    for (s, &r) in order.iter().enumerate() {
        sorted.row_mut(s).copy_from_slice(items.row(r));
    }
    let sorted_ids: Vec<i64> = order.iter().map(|&r| ids[r]).collect();
    ops::exact_topk(be, queries, &sorted, metric, k)?
        .ids
        .iter()
        .map(|&r| item_id(&sorted_ids, r))
        .collect()
}

fn cmd_eval(a: &EvalArgs, o: OpenOptions) -> Result<()> {
    let be = open_backend(&a.q.backend, o)?;
    let index = load_resident(be.as_ref(), &a.q.index)?;
    let rerank = rerank_of(&a.q)?;
    check_rerank(&index, &a.q.index, rerank)?;
    let queries = load_queries(&index, &a.q.queries)?;
    if queries.rows() == 0 {
        return Err(Error::file(
            &a.q.queries,
            "no queries (0 rows): recall is undefined",
        ));
    }
    let ks = parse_list(&a.k, "k")?;
    for &k in &ks {
        ops::check_k(k)?;
    }
    let kmax = ks.iter().copied().max().unwrap_or(0);
    ops::check_k(kmax)?;
    check_result_size(queries.rows(), kmax, "k")?;
    let (truth, truth_k) = match (&a.gt, &a.items) {
        (Some(gt), _) => {
            let g = npy::read_i64_2d(gt)?;
            if g.rows != queries.rows() || g.cols < kmax {
                return Err(Error::file(
                    gt,
                    format!(
                        "ground truth is {} x {}, need {} queries x at least {kmax}",
                        g.rows,
                        g.cols,
                        queries.rows()
                    ),
                ));
            }
            (g.data, g.cols)
        }
        (None, Some(items)) => {
            let m = npy::read_matrix(items)?;
            m.check_cols(index.dim(), &format!("items ({})", items.display()))?;
            let ids = a
                .ids
                .as_ref()
                .map(|p| read_item_ids(p, m.rows(), items))
                .transpose()?;
            let data = exact_truth(be.as_ref(), &queries, &m, ids, index.metric, kmax)?;
            (data, kmax)
        }
        (None, None) => return Err(Error::param("eval needs --gt or --items")),
    };
    let mut rows = Vec::new();
    for beam in &a.beam {
        let params = SearchParams {
            k: kmax,
            beams: parse_list(beam, "beam")?,
            rerank,
        };
        let mut best = f64::INFINITY;
        let mut out = None;
        for _ in 0..a.repeats {
            let t = Instant::now();
            out = Some(search(be.as_ref(), &index, &queries, None, &params)?);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let out = out.ok_or_else(|| Error::param("no repetition ran"))?;
        let recalls: Vec<(usize, f64)> = ks
            .iter()
            .map(|&k| Ok((k, recall_at(&out.topk, &truth, truth_k, k)?)))
            .collect::<Result<_>>()?;
        let cand = out.candidates.iter().sum::<usize>() as f64 / queries.rows().max(1) as f64;
        rows.push(json!({
            "beam": params.beams,
            "candidates": cand,
            "recall": recalls.iter().map(|(k, r)| (format!("{k}"), json!(r))).collect::<serde_json::Map<_, _>>(),
            "qps": queries.rows() as f64 / best.max(1e-9),
            "seconds": best,
        }));
    }
    let report = json!({
        "index": a.q.index, "queries": queries.rows(), "backend": be.name(),
        "rerank": a.q.rerank, "rerank_k": a.q.rerank_k, "rows": rows,
    });
    if a.json {
        println!("{report}");
    } else {
        print!("{:>16} {:>12}", "beam", "candidates");
        for k in &ks {
            print!(" {:>10}", format!("recall@{k}"));
        }
        println!(" {:>10}", "queries/s");
        for r in &rows {
            print!(
                "{:>16} {:>12.0}",
                r["beam"].as_array().map_or(String::new(), |b| b
                    .iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(",")),
                r["candidates"].as_f64().unwrap_or(0.0)
            );
            for k in &ks {
                print!(
                    " {:>10.4}",
                    r["recall"][format!("{k}")].as_f64().unwrap_or(0.0)
                );
            }
            println!(" {:>10.0}", r["qps"].as_f64().unwrap_or(0.0));
        }
    }
    Ok(())
}

fn cmd_info(path: &Path, as_json: bool) -> Result<()> {
    let index = file::load(path)?;
    let stats = depth_stats(&index);
    let mse = reconstruction_mse(&index);
    let emb = index
        .embeddings
        .as_ref()
        .map_or("none", |e| match e.kind() {
            EmbeddingKind::F16 => "f16",
            EmbeddingKind::Bf16 => "bf16",
            EmbeddingKind::F32 => "f32",
            EmbeddingKind::None => "none",
        });
    if as_json {
        println!(
            "{}",
            json!({"items": index.len(), "dim": index.dim(), "levels": index.levels(),
                   "metric": index.metric.name(), "codes": index.codebooks.sizes(),
                   "embeddings": emb, "reconstruction_mse": mse, "depths": stats})
        );
        return Ok(());
    }
    println!(
        "{}: {} items, d = {}, metric {}, {} levels {:?}, embeddings {}",
        path.display(),
        index.len(),
        index.dim(),
        index.metric.name(),
        index.levels(),
        index.codebooks.sizes(),
        emb
    );
    println!(
        "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12} {:>14} {:>8} {:>10}",
        "depth",
        "K",
        "nodes",
        "min",
        "median",
        "max",
        "entropy/bit",
        "empty codes",
        "cv",
        "largest"
    );
    for s in &stats {
        println!(
            "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12.3} {:>14} {:>8.3} {:>10.5}",
            s.depth,
            s.codewords,
            s.nodes,
            s.items_min,
            s.items_median,
            s.items_max,
            s.code_entropy_bits,
            s.empty_codewords,
            s.items_cv,
            s.largest_share
        );
    }
    if let Some(m) = mse {
        println!("reconstruction MSE (stored embeddings): {m:.6}");
    }
    Ok(())
}

fn cmd_demo(backend: &str, seed: u64, as_json: bool, o: OpenOptions) -> Result<()> {
    let be = open_backend(backend, o)?;
    let t = Instant::now();
    let r = demo::run(be.as_ref(), seed, !as_json)?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string(&r).map_err(|e| Error::param(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "rqtree demo ({} backend): {} clustered items, d = {}, {} levels x {} codes, {} queries",
        r.backend, r.items, r.dim, r.levels, r.codes, r.queries
    );
    println!(
        "index built in {:.2} s (residual k-means + encoding + tree)",
        r.build_s
    );
    println!(
        "{:>10} {:>12} {:>10} {:>12}",
        "beam", "candidates", "recall@10", "queries/s"
    );
    for row in &r.rows {
        println!(
            "{:>10} {:>12.0} {:>10.4} {:>12.0}",
            format!("{},{}", row.beam[0], row.beam[1]),
            row.candidates,
            row.recall10,
            row.qps
        );
    }
    println!(
        "(exact re-rank of all candidates; recall against brute-force search; total {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    if let Some(t) = cli.threads {
        // The emu device takes its worker count from the environment when it is opened; set
        // here, before any other thread exists.
        std::env::set_var("RQTREE_EMU_WORKERS", t.to_string());
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| Error::param(format!("--threads {t}: {e}")))?;
    }
    let o = OpenOptions {
        tensor_cores: cli.tensor_cores,
        fused_kernel: cli.fused_kernel.parse()?,
    };
    match &cli.cmd {
        Cmd::Build(a) => cmd_build(a, o),
        Cmd::Search(a) => cmd_search(a, o),
        Cmd::Eval(a) => cmd_eval(a, o),
        Cmd::Info { index, json } => cmd_info(index, *json),
        Cmd::Demo {
            backend,
            seed,
            json,
        } => cmd_demo(backend, *seed, *json, o),
        Cmd::Learn(a) => cmd_learn(a, o),
        Cmd::Ttt(a) => cmd_ttt(a),
        Cmd::Bench {
            backend,
            json,
            quick,
            targets,
            only,
        } => {
            let be = open_backend(backend, o)?;
            let opts = bench::BenchOptions {
                quick: *quick,
                targets: *targets,
                json: *json,
                tensor_cores: o.tensor_cores,
                fused_kernel: o.fused_kernel,
                only: *only,
            };
            bench::run(be.as_ref(), &opts)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
