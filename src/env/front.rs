//! The front-end commands of the CLI: `build`, `lock`, `context`, `edit`, `proposals`,
//! `approve`, `reject`, and how `run` finds its environment (a project, `--with`,
//! `--env`). Errors print one line `nixcell: ...` and exit 125.

use crate::context;
use crate::edit::{self, EditOutcome, EditRequest, Op};
use crate::nix::build::{self, Progress};
use crate::plan::CellRequest;
use crate::project::{Built, PackageSet, Project};
use crate::units::human_delta;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct ProjectArg {
    /// The project directory (default: the nearest directory upwards with a devenv.nix).
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
}

impl ProjectArg {
    pub fn open(&self) -> anyhow::Result<Project> {
        Ok(match &self.project {
            Some(d) => Project::open(d)?,
            None => Project::discover(&std::env::current_dir()?)?,
        })
    }
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    #[command(flatten)]
    pub project: ProjectArg,
    /// Print the build (environment, GC root, services) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    pub project: ProjectArg,
    /// Resolve the package set again and move the pin (else only a missing pin is
    /// written).
    #[arg(long)]
    pub update: bool,
    /// Print the pin as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

#[derive(Args, Debug)]
pub struct ContextArgs {
    #[command(flatten)]
    pub project: ProjectArg,
    /// Print the context as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
    /// Old spelling of --json (`--format json`); kept for scripts, hidden.
    #[arg(long, value_enum, hide = true)]
    pub format: Option<Format>,
    /// Keep the Markdown within about this many tokens: the least useful sections are
    /// shortened or left out first, and a closing note says which.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// List every command on PATH and every store path (no toolbox summaries).
    #[arg(long)]
    pub full: bool,
    /// Describe runs of this sandbox profile [default: the project's, else "default"].
    #[arg(long, value_name = "NAME|PATH")]
    pub profile: Option<String>,
    /// Describe runs through the MCP server (`nixcell mcp`): a private copy of the
    /// project per run, the server's default limits, edits through `edit_environment`.
    #[arg(long)]
    pub mcp: bool,
}

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The edit to make.
    #[arg(value_enum)]
    pub op: Op,
    /// Attribute name (package: an attribute path such as `jq` or `python3Packages.numpy`;
    /// allow-domain: NAME[:PORT], port 443 by default).
    pub name: String,
    /// Record a proposal for a human instead of committing.
    #[arg(long)]
    pub propose: bool,
    /// The sandbox profile whose network allow list bounds allow-domain (default: the
    /// project's, else "default").
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    #[command(flatten)]
    pub project: ProjectArg,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ProposalsArgs {
    #[command(flatten)]
    pub project: ProjectArg,
    /// Every proposal, also approved and rejected ones.
    #[arg(long)]
    pub all: bool,
    /// Print the proposals as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DecideArgs {
    /// The proposal's id (see `nixcell proposals`).
    pub id: String,
    #[command(flatten)]
    pub project: ProjectArg,
    /// The sandbox profile whose network allow list bounds an allow-domain proposal
    /// (default: the project's, else "default"; `reject` ignores it).
    #[arg(long, value_name = "NAME|FILE")]
    pub profile: Option<String>,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `nixcell: ERROR` on stderr, with `--json` also the error object on stdout; exit 125.
fn fail(e: anyhow::Error, json: bool) -> i32 {
    crate::verdict::report_refusal(json, crate::verdict::VerdictError::of_error(&e), false)
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn build(args: &BuildArgs) -> i32 {
    let go = || -> anyhow::Result<Built> {
        let p = args.project.open()?;
        Ok(p.build(Progress::Stderr)?)
    };
    match go() {
        Ok(b) if args.json => {
            let mut v = serde_json::to_value(&b).unwrap_or_default();
            v["cached"] = b.cached.into();
            v["services"] = serde_json::to_value(b.services()).unwrap_or_default();
            print_json(&v);
            0
        }
        Ok(b) => {
            println!("{}", b.env.display());
            0
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn lock(args: &LockArgs) -> i32 {
    let go = || -> anyhow::Result<crate::project::PinInfo> {
        let p = args.project.open()?;
        Ok(p.pin(args.update)?.info())
    };
    match go() {
        Ok(i) if args.json => {
            print_json(&i);
            0
        }
        Ok(i) => {
            println!(
                "{} ({}) pinned to {} {} in {}",
                i.source,
                i.origin,
                i.locked,
                i.nar_hash,
                i.lock_file.display()
            );
            0
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn context(args: &ContextArgs) -> i32 {
    let go = || -> anyhow::Result<context::Context> {
        let p = args.project.open()?;
        let b = p.build(Progress::Stderr)?;
        let opts = context::Options {
            profile: args.profile.clone(),
            mcp: args.mcp,
        };
        Ok(context::gather(&p, &b, &opts)?)
    };
    let detail = if args.full {
        context::Detail::Full
    } else {
        context::Detail::Default
    };
    let json = args.json || matches!(args.format, Some(Format::Json));
    match go() {
        Ok(c) => {
            if json {
                print_json(&c);
            } else {
                print!("{}", context::to_markdown(&c, args.max_tokens, detail));
            }
            0
        }
        Err(e) => fail(e, json),
    }
}

fn report_outcome(o: &EditOutcome, json: bool) {
    if json {
        print_json(o);
        return;
    }
    let d = &o.closure_diff;
    let what = format!(
        "{} {} ({} store paths added, {} removed, {})",
        o.operation.as_str(),
        o.name,
        d.added.len(),
        d.removed.len(),
        human_delta(d.size_delta_bytes)
    );
    match (&o.commit, &o.proposal) {
        (Some(c), _) => println!("committed {}: {what}", &c[..c.len().min(12)]),
        (_, Some(id)) => println!(
            "proposed {id}: {what}\napprove with `nixcell approve {id}`, reject with `nixcell reject {id}`"
        ),
        _ => println!("{what}"),
    }
    print!("{}", o.diff);
}

/// The network allow list of the profile runs of `project` get (`profile`, else the
/// project's, else "default"): the ceiling of `allow-domain`.
fn network_ceiling(
    project: &Project,
    profile: Option<&str>,
) -> anyhow::Result<crate::net::NetPolicy> {
    let name = profile
        .map(String::from)
        .or_else(|| project.config.profile.clone())
        .unwrap_or_else(|| "default".into());
    Ok(crate::profile::load(&name)?.network)
}

pub fn edit(args: &EditArgs) -> i32 {
    let go = || -> anyhow::Result<EditOutcome> {
        let p = args.project.open()?;
        let req = EditRequest {
            op: args.op,
            name: args.name.clone(),
            propose: args.propose,
        };
        let network = network_ceiling(&p, args.profile.as_deref())?;
        Ok(edit::edit(&p, &req, &network, Progress::Stderr)?)
    };
    match go() {
        Ok(o) => {
            report_outcome(&o, args.json);
            0
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn proposals(args: &ProposalsArgs) -> i32 {
    let go = || -> anyhow::Result<Vec<edit::Proposal>> {
        let p = args.project.open()?;
        let mut list = edit::list_proposals(&p)?;
        if !args.all {
            list.retain(|p| p.status == edit::ProposalStatus::Pending);
        }
        Ok(list)
    };
    match go() {
        Ok(list) if args.json => {
            print_json(&list);
            0
        }
        Ok(list) => {
            if list.is_empty() {
                println!(
                    "no {}proposals{}",
                    if args.all { "" } else { "pending " },
                    if args.all {
                        ""
                    } else {
                        " (--all lists approved and rejected ones too)"
                    }
                );
            }
            for p in &list {
                let status = serde_json::to_value(p.status).unwrap_or_default();
                println!(
                    "{} {} {} {} ({} store paths added, {})",
                    p.id,
                    status.as_str().unwrap_or(""),
                    p.operation.as_str(),
                    p.name,
                    p.closure_diff.added.len(),
                    human_delta(p.closure_diff.size_delta_bytes)
                );
            }
            0
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn approve(args: &DecideArgs) -> i32 {
    let go = || -> anyhow::Result<EditOutcome> {
        let p = args.project.open()?;
        let network = network_ceiling(&p, args.profile.as_deref())?;
        Ok(edit::approve(&p, &args.id, &network, Progress::Stderr)?)
    };
    match go() {
        Ok(o) => {
            report_outcome(&o, args.json);
            0
        }
        Err(e) => fail(e, args.json),
    }
}

pub fn reject(args: &DecideArgs) -> i32 {
    let go = || -> anyhow::Result<edit::Proposal> {
        let p = args.project.open()?;
        Ok(edit::reject(&p, &args.id)?)
    };
    match go() {
        Ok(p) if args.json => {
            print_json(&p);
            0
        }
        Ok(p) => {
            println!("rejected {}: {} {}", p.id, p.operation.as_str(), p.name);
            0
        }
        Err(e) => fail(e, args.json),
    }
}

/// Where `run` gets its environment besides `--env-path`.
#[derive(Debug, Default, Clone)]
pub struct EnvSources {
    /// `--with NAME`: packages of the package set.
    pub with: Vec<String>,
    /// `--env INSTALLABLE`: flake outputs.
    pub flakes: Vec<String>,
    pub impure: bool,
    pub project: Option<PathBuf>,
}

/// What a run in a project adds to the request, besides the environment.
#[derive(Debug, Default)]
pub struct FromProject {
    /// `profile` of nixcell.toml (a `--profile` given on the command line wins).
    pub profile: Option<String>,
    pub timeout: Option<std::time::Duration>,
    pub tmp_size_bytes: Option<u64>,
    pub max_output_bytes: Option<u64>,
    /// `[network]` of nixcell.toml (narrows the profile's).
    pub network: Option<crate::net::NetPolicy>,
    pub built: Option<Built>,
    /// The project's `[policy]`: hints suggest only edits it accepts.
    pub policy: Option<crate::project::Policy>,
    /// The package set the environment comes from: hints name only packages it has.
    pub package_set: Option<PackageSet>,
}

fn user_cache_dir(sub: &str) -> anyhow::Result<PathBuf> {
    Ok(crate::dirs::private_dir(crate::dirs::Base::Cache, sub)?)
}

/// Completes `req` with the environment the user named: `--env-path`s as given, then
/// `--with` and `--env` builds; with none of these, the project's declaration (found
/// from `--project` or the current directory), its variables and limits.
pub fn resolve_env(req: &mut CellRequest, src: &EnvSources) -> anyhow::Result<FromProject> {
    let mut extra = FromProject::default();
    if !src.with.is_empty() {
        for n in &src.with {
            crate::edit::policy::check_name(crate::edit::policy::Subject::Package, n)
                .map_err(|e| anyhow::anyhow!("--with: {e}"))?;
        }
        // In a project, its pinned package set; else NIX_PATH's.
        let set = match Project::discover(Path::new(".")) {
            Ok(p) => p.package_set()?,
            Err(crate::project::ProjectError::NotFound(_)) => {
                PackageSet::from_nix_path(&std::env::current_dir()?)
                    .ok_or(crate::project::ProjectError::NoPackageSet)??
            }
            Err(e) => return Err(e.into()),
        };
        extra.package_set = Some(set.clone());
        let env = crate::declare::build_with(
            &src.with,
            &set,
            &user_cache_dir("with")?,
            Progress::Stderr,
        )?;
        req.env_paths.push(env);
    }
    for f in &src.flakes {
        use sha2::{Digest, Sha256};
        let cwd = std::env::current_dir()?;
        let key = hex::encode(Sha256::digest(format!("{}\0{f}", cwd.display())));
        let link = user_cache_dir("flakes")?.join(&key[..32]);
        let env = build::flake_env(f, src.impure, &link, Progress::Stderr)
            .map_err(|e| anyhow::anyhow!("--env {f}: {e}"))?;
        for p in env.paths {
            if !req.env_paths.contains(&p) {
                req.env_paths.push(p);
            }
        }
        // A dev shell's variables, under those given with --setenv.
        let mut vars: Vec<String> = env.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        vars.append(&mut req.setenv);
        req.setenv = vars;
    }
    if !req.env_paths.is_empty() {
        if extra.package_set.is_none() {
            // Only a directory: naming packages in hints is no reason to resolve a
            // reference (that may fetch).
            extra.package_set = PackageSet::nix_path_value()
                .filter(|v| v.starts_with('/'))
                .and_then(|v| PackageSet::at(Path::new(&v)).ok());
        }
        return Ok(extra);
    }
    let project = match &src.project {
        Some(d) => Project::open(d)?,
        None => match Project::discover(&std::env::current_dir()?) {
            Err(crate::project::ProjectError::NotFound(dir)) => anyhow::bail!(
                "no environment: give --env-path, --with or --env, or run in a project \
                 (no devenv.nix in {} or any parent directory)",
                dir.display()
            ),
            other => other?,
        },
    };
    let built = project.build(Progress::Stderr)?;
    *req = project.cell_request(&built, std::mem::take(req));
    extra.profile = project.config.profile.clone();
    extra.timeout = project.limits.timeout;
    extra.tmp_size_bytes = Some(project.limits.tmp_size_bytes);
    extra.max_output_bytes = project.limits.max_output_bytes;
    extra.network = project.limits.network.clone();
    extra.built = Some(built);
    extra.policy = Some(project.config.policy.clone());
    extra.package_set = project.package_set().ok();
    Ok(extra)
}
