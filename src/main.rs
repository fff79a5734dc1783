//! The `posta` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use posta::config::Config;
use posta::hooks::PluginRegistry;
use posta::queue::inspect;

#[derive(Parser)]
#[command(
    name = "posta",
    version,
    about = "A mail transfer agent that speaks Haraka's config, hooks and queue format"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// Config directory (Haraka layout).
        #[arg(short, long, default_value = "config")]
        config: PathBuf,
    },
    /// Validate a config directory; exits non-zero on errors.
    CheckConfig {
        #[arg(short, long, default_value = "config")]
        config: PathBuf,
    },
    /// Inspect and change the queue: through a running daemon's control socket, or offline.
    #[command(long_about = QUEUE_ABOUT)]
    Queue(QueueArgs),
    /// Install the system layout: /usr/local/bin/posta, user posta, /etc/posta (from the
    /// shipped config, adjusted), /var/spool/posta, /var/mail/posta and the systemd unit.
    /// Idempotent: existing config files are never changed.
    Install {
        /// Stage everything under this directory instead of / (packages, tests).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The config directory to copy into a new /etc/posta.
        #[arg(long, default_value = "config")]
        config_from: PathBuf,
        /// `smtp.ini` listen address of a new /etc/posta.
        #[arg(long, default_value = "[::0]:25")]
        listen: String,
        /// Do not create the posta user and group (directories stay owned by the caller).
        #[arg(long)]
        no_user: bool,
        /// Do not install the systemd unit.
        #[arg(long)]
        no_systemd: bool,
    },
    /// Make the running daemon re-read its config directory (as SIGHUP does) and say what it did.
    Reload {
        #[arg(short, long, default_value = "config")]
        config: PathBuf,
    },
    /// Live view of a running daemon's metrics endpoint (like top); --once prints one table.
    Top(posta::top::TopArgs),
}

const QUEUE_ABOUT: &str = "\
Inspect and change the queue. When a daemon runs on the queue directory, list, stat, flush, \
delete, hold and release go through its control socket (<queue>/.control): it applies them to \
its own index, and refuses to delete or hold an item it is delivering at that moment.

Otherwise (no daemon, a copy, or a Haraka 3.x queue dir) the commands read and rename the files \
of the queue directory themselves. inspect always reads the files; bounce goes through the \
daemon too (its DSN is queued by the daemon, which refuses an item it is delivering).

The queue dir is found as the daemon finds it (`queue_dir` in the config dir, default \
<config>/../queue), or given with --queue-dir.";

#[derive(clap::Args)]
struct QueueArgs {
    /// Config directory: the queue dir is its `queue_dir` (as the daemon finds it).
    #[arg(short, long, global = true, value_name = "DIR")]
    config: Option<PathBuf>,
    /// The queue directory itself (e.g. a Haraka queue dir) instead of -c.
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "config")]
    queue_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: QueueCmd,
}

#[derive(clap::Args, Default)]
struct FilterArgs {
    /// Only items for this destination domain (case-insensitive).
    #[arg(long, value_name = "D")]
    domain: Option<String>,
    /// Only items from this sender: an address, a domain (example.com, @example.com), or <>.
    #[arg(long, value_name = "S")]
    sender: Option<String>,
    /// Only items that arrived at least this long ago (30s, 10m, 2h, 1d, 1h30m).
    #[arg(long, value_name = "AGE", value_parser = inspect::parse_duration)]
    older_than: Option<u64>,
}

impl FilterArgs {
    fn filter(&self) -> inspect::Filter {
        inspect::Filter {
            domain: self.domain.clone(),
            sender: self.sender.clone(),
            older_than_ms: self.older_than,
        }
    }

    fn is_empty(&self) -> bool {
        self.domain.is_none() && self.sender.is_none() && self.older_than.is_none()
    }
}

#[derive(Subcommand)]
enum QueueCmd {
    /// One line per queued item: id, age, attempts, next attempt, sender, recipients, last error.
    #[command(visible_alias = "qlist")]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// List the held items (in <queue>/hold/) instead.
        #[arg(long)]
        held: bool,
        /// Machine-readable output (a JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Items by destination domain and age (like Postfix's qshape), with totals.
    #[command(visible_alias = "qstat")]
    Stat {
        /// Machine-readable output (a JSON object).
        #[arg(long)]
        json: bool,
    },
    /// Show one item: envelope, recipients with their DSN fields, notes, message headers.
    Inspect {
        /// The item id (its file name).
        id: String,
        /// Show the whole message, not only its headers.
        #[arg(long)]
        body: bool,
    },
    /// Remove items: by id, or every item matching --all [--domain D] [--sender S] [--older-than AGE].
    Delete {
        /// Item ids (file names).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every item of the active queue (held and corrupt files are kept), or those matching the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Make items due now (attempts kept): by id, by filter, or all when none is given.
    Flush {
        /// Item ids (file names).
        ids: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Move items to <queue>/hold/: they are not delivered until released.
    Hold {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Move held items back to the queue.
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Fail every recipient of an item: queue a DSN (5.0.0) to its sender, remove the item.
    Bounce {
        /// The item id (its file name).
        id: String,
        /// Why: the DSN's `Diagnostic-Code: X-Posta; <reason>`.
        #[arg(long, value_name = "TEXT")]
        reason: String,
        /// This MTA's name in the DSN (default: `me` of the config dir, or the host name).
        #[arg(long, value_name = "NAME")]
        me: Option<String>,
    },
}

/// Set up logging from the config dir's `log.ini`/`loglevel` (`POSTA_LOG` overrides the level).
/// `run` stops on a bad value; `check-config` reports it itself (so here it falls back to the
/// defaults), and so do the offline queue tools.
fn init_logging(cmd: &Cmd) -> Result<(), String> {
    let (dir, strict) = match cmd {
        Cmd::Run { config } => (Some(config.as_path()), true),
        Cmd::CheckConfig { config } => (Some(config.as_path()), false),
        Cmd::Queue(args) => (args.config.as_deref(), false),
        Cmd::Top(_) | Cmd::Reload { .. } | Cmd::Install { .. } => (None, false),
    };
    let settings = match dir.map(posta::logging::load) {
        None => posta::logging::LogSettings::default(),
        Some(Ok(s)) => s,
        Some(Err(e)) if strict => return Err(format!("config error: {e}")),
        Some(Err(_)) => posta::logging::LogSettings::default(),
    };
    posta::logging::init(&settings);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.command) {
        return fail(&e);
    }
    let registry = PluginRegistry::builtin();
    match cli.command {
        Cmd::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return fail(&format!("config error: {e}")),
            };
            match posta::server::run(&cfg, &registry) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("cannot start: {e}")),
            }
        }
        Cmd::CheckConfig { config } => match Config::load(&config)
            .and_then(|c| posta::logging::load(&config).map(|_| c))
            .and_then(|c| registry.build(&c).map(|_| c))
            .and_then(|c| posta::server::inbound_tls(&c).map(|_| c))
        {
            Ok(c) => {
                println!(
                    "config {} OK: {} plugin(s), listen {:?}",
                    config.display(),
                    c.plugins.len(),
                    c.smtp.listen
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("config error: {e}")),
        },
        Cmd::Queue(args) => queue_cmd(args),
        Cmd::Reload { config } => reload_cmd(&config),
        Cmd::Install {
            root,
            config_from,
            listen,
            no_user,
            no_systemd,
        } => install_cmd(&posta::install::InstallOptions {
            root,
            config_from,
            listen,
            user: !no_user,
            systemd: !no_systemd,
        }),
        Cmd::Top(args) => match posta::top::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        },
    }
}

/// `posta install`: the report, then the config check of the installed /etc/posta.
fn install_cmd(o: &posta::install::InstallOptions) -> ExitCode {
    let report = match posta::install::install(o) {
        Ok(r) => r,
        Err(e) => return fail(&format!("install: {e}")),
    };
    for line in &report {
        println!("{line}");
    }
    let etc = o.root.join(posta::install::ETC);
    match Config::load(&etc).and_then(|c| PluginRegistry::builtin().build(&c).map(|_| c)) {
        Ok(c) => println!(
            "config {} OK: {} plugin(s), listen {:?}",
            etc.display(),
            c.plugins.len(),
            c.smtp.listen
        ),
        Err(e) => return fail(&format!("installed, but the config does not load: {e}")),
    }
    if o.systemd {
        println!(
            "next: set {}/me and host_list, then: systemctl daemon-reload && systemctl enable --now posta",
            etc.display()
        );
    }
    ExitCode::SUCCESS
}

/// `posta reload`: through the control socket of the daemon running on this config's queue.
fn reload_cmd(config: &std::path::Path) -> ExitCode {
    use posta::actors::control::{self, ControlRequest};
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return fail(&format!("config error (nothing sent to the daemon): {e}")),
    };
    match control::request(&cfg.queue_dir, &ControlRequest::Reload) {
        None => fail(&format!(
            "no daemon is running on {} (no control socket); start one with `posta run -c {}`",
            cfg.queue_dir.display(),
            config.display()
        )),
        Some(Err(e)) => fail(&e),
        Some(Ok(r)) => match (r.reloaded, r.error) {
            (Some(done), _) => {
                println!("{done}");
                ExitCode::SUCCESS
            }
            (None, e) => fail(e.as_deref().unwrap_or("the daemon gave no answer")),
        },
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("posta: {msg}");
    ExitCode::FAILURE
}

/// Where the queue is, and the config when it was found through one.
fn queue_location(args: &QueueArgs) -> Result<(PathBuf, Option<Config>), String> {
    if let Some(q) = &args.queue_dir {
        return Ok((q.clone(), None));
    }
    let dir = args.config.clone().unwrap_or_else(|| PathBuf::from("config"));
    let cfg = Config::load(&dir).map_err(|e| format!("config error: {e}"))?;
    Ok((cfg.queue_dir.clone(), Some(cfg)))
}

fn queue_cmd(args: QueueArgs) -> ExitCode {
    let (dir, cfg) = match queue_location(&args) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    if let Err(e) = inspect::check_dir(&dir) {
        return fail(&e.to_string());
    }
    let now = posta::hooks::state::now_ms();
    if let Some(code) = queue_online(&dir, &args.cmd, now) {
        return code;
    }
    match args.cmd {
        QueueCmd::List { filter, held, json } => match inspect::list(&dir, &filter.filter(), held, now) {
            Ok(entries) if json => print_json(&entries),
            Ok(entries) => {
                print_list(&entries, held, !filter.is_empty(), now, &[]);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        QueueCmd::Stat { json } => match inspect::stat(&dir, now) {
            Ok(s) if json => print_json(&s),
            Ok(s) => {
                print_stat(&s);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        QueueCmd::Inspect { id, body } => match inspect::inspect(&dir, &id, body) {
            Ok(i) => {
                print_inspection(&i, now);
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        QueueCmd::Delete { ids, all, filter } => {
            if all {
                return match inspect::delete_matching(&dir, &filter.filter(), now) {
                    Ok(removed) => {
                        for id in &removed {
                            println!("deleted {id}");
                        }
                        println!("{} item(s) deleted", removed.len());
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(&e.to_string()),
                };
            }
            if !filter.is_empty() {
                return fail("--domain, --sender and --older-than need --all (delete --all --domain D)");
            }
            each_id(&ids, |id| inspect::delete(&dir, id).map(|_| format!("deleted {id}")))
        }
        QueueCmd::Flush { ids, filter } => {
            if !ids.is_empty() {
                if !filter.is_empty() {
                    return fail("give item ids or filters, not both");
                }
                let mut code = ExitCode::SUCCESS;
                for (_, r) in inspect::flush_ids(&dir, &ids, now) {
                    match r {
                        Ok(f) => println!("{}", flushed_line(&f)),
                        Err(e) => code = fail(&e.to_string()),
                    }
                }
                return code;
            }
            match inspect::flush_matching(&dir, &filter.filter(), now) {
                Ok(done) => {
                    for f in &done {
                        println!("{}", flushed_line(f));
                    }
                    println!(
                        "{} item(s) due now; the daemon delivers them when it next starts",
                        done.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        QueueCmd::Hold { ids } => each_id(&ids, |id| inspect::hold(&dir, id).map(|l| format!("held {}", l.name))),
        QueueCmd::Release { ids } => each_id(&ids, |id| {
            inspect::release(&dir, id).map(|l| format!("released {}", l.name))
        }),
        QueueCmd::Bounce { id, reason, me } => {
            let me = me
                .or_else(|| cfg.as_ref().map(|c| c.me.clone()))
                .unwrap_or_else(host_name);
            let opts = inspect::BounceOptions {
                reason: &reason,
                me: &me,
                template: cfg.as_ref().and_then(|c| c.bounce_template.as_ref()),
                now_ms: now,
            };
            match inspect::bounce(&dir, &id, &opts) {
                Ok(b) => {
                    println!("{}", b.describe(&id));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
    }
}

/// With a daemon running on the queue dir, send the command over its control socket and print
/// what it did, as the offline code would. `None`: no daemon answers; work on the files.
fn queue_online(dir: &std::path::Path, cmd: &QueueCmd, now: u64) -> Option<ExitCode> {
    use posta::actors::control::{self, ControlRequest as Req};
    let list_req = |f: &FilterArgs, held: bool| Req::List {
        held,
        domain: f.domain.clone(),
        sender: f.sender.clone(),
        older_than_ms: f.older_than,
    };
    let req = match cmd {
        QueueCmd::List { filter, held, .. } => list_req(filter, *held),
        QueueCmd::Stat { .. } => Req::Stat,
        // Bad combinations: the offline code reports them before touching anything.
        QueueCmd::Flush { ids, filter } if ids.is_empty() || filter.is_empty() => Req::Flush {
            ids: ids.clone(),
            domain: filter.domain.clone(),
            sender: filter.sender.clone(),
            older_than_ms: filter.older_than,
        },
        QueueCmd::Delete { all: true, filter, .. } => list_req(filter, false),
        QueueCmd::Delete { ids, filter, .. } if filter.is_empty() => Req::Delete { ids: ids.clone() },
        QueueCmd::Hold { ids } => Req::Hold { ids: ids.clone() },
        QueueCmd::Release { ids } => Req::Release { ids: ids.clone() },
        QueueCmd::Bounce { id, reason, .. } => Req::Bounce {
            ids: vec![id.clone()],
            reason: reason.clone(),
        },
        _ => return None,
    };
    let resp = match control::request(dir, &req)? {
        Ok(r) => r,
        Err(e) => return Some(fail(&e)),
    };
    // Print each item's line or error; how many succeeded.
    let results = |results: &[control::IdResult], code: &mut ExitCode| {
        let mut done = 0;
        for r in results {
            match (&r.ok, &r.error) {
                (Some(line), _) => {
                    println!("{line}");
                    done += 1;
                }
                (None, e) => *code = fail(e.as_deref().unwrap_or("failed")),
            }
        }
        done
    };
    let mut code = ExitCode::SUCCESS;
    match cmd {
        QueueCmd::List { filter, held, json } => {
            let entries = resp.entries.unwrap_or_default();
            if !*json {
                print_list(&entries, *held, !filter.is_empty(), now, &resp.in_flight);
                return Some(code);
            }
            let mut v = serde_json::to_value(&entries).unwrap_or_default();
            for o in v.as_array_mut().into_iter().flatten().filter_map(|o| o.as_object_mut()) {
                let id = o.get("id").and_then(|i| i.as_str()).unwrap_or_default().to_string();
                o.insert("in_flight".into(), resp.in_flight.contains(&id).into());
            }
            Some(print_json(&v))
        }
        QueueCmd::Stat { json } => {
            let stat = resp.stat?;
            let (waiting, delivering) = (resp.waiting.unwrap_or(0), resp.delivering.unwrap_or(0));
            if *json {
                let mut v = serde_json::to_value(&stat).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("waiting".into(), waiting.into());
                    o.insert("in_flight".into(), delivering.into());
                }
                return Some(print_json(&v));
            }
            print_stat(&stat);
            println!("daemon: {waiting} waiting, {delivering} in flight");
            Some(code)
        }
        QueueCmd::Flush { ids, filter } => {
            if ids.is_empty() && filter.is_empty() {
                let (waiting, delivering) = (resp.waiting.unwrap_or(0), resp.delivering.unwrap_or(0));
                println!("{waiting} item(s) due now, {delivering} in flight (retried at once if deferred)");
                return Some(code);
            }
            let done = results(&resp.results, &mut code);
            if ids.is_empty() {
                println!("{done} item(s) due now");
            }
            Some(code)
        }
        QueueCmd::Delete { all: true, .. } => {
            let ids: Vec<String> = resp
                .entries
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| match e {
                    inspect::Entry::Item(s) => Some(s.id),
                    inspect::Entry::Corrupt { .. } => None,
                })
                .collect();
            let mut done = 0;
            if !ids.is_empty() {
                match control::request(dir, &Req::Delete { ids }) {
                    Some(Ok(r)) => done = results(&r.results, &mut code),
                    Some(Err(e)) => return Some(fail(&e)),
                    None => return Some(fail("the daemon stopped answering; nothing deleted")),
                }
            }
            println!("{done} item(s) deleted");
            Some(code)
        }
        _ => {
            results(&resp.results, &mut code);
            Some(code)
        }
    }
}

/// Run `f` for each id; print what it did, or the error (exit code 1 if any failed).
fn each_id(ids: &[String], f: impl Fn(&str) -> Result<String, inspect::InspectError>) -> ExitCode {
    let mut code = ExitCode::SUCCESS;
    for id in ids {
        match f(id) {
            Ok(line) => println!("{line}"),
            Err(e) => code = fail(&e.to_string()),
        }
    }
    code
}

fn flushed_line(f: &inspect::Flushed) -> String {
    if f.old == f.new {
        format!("{}: already due", f.old)
    } else {
        format!("flushed {} -> {}", f.old, f.new)
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn print_json<T: serde::Serialize>(v: &T) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot write JSON: {e}")),
    }
}

fn angle(a: &str) -> String {
    format!("<{a}>")
}

/// `in_flight`: ids the daemon is delivering now (their NEXT is `in flight`).
fn print_list(entries: &[inspect::Entry], held: bool, filtered: bool, now: u64, in_flight: &[String]) {
    if entries.is_empty() {
        println!(
            "{}",
            match (held, filtered) {
                (_, true) => "no matching items",
                (true, false) => "nothing is held",
                (false, false) => "queue is empty",
            }
        );
        return;
    }
    const HEAD: [&str; 7] = ["ID", "AGE", "ATT", "NEXT", "FROM", "TO", "LAST ERROR"];
    let rows: Vec<Result<[String; 7], (String, String)>> = entries
        .iter()
        .map(|e| match e {
            inspect::Entry::Item(s) => Ok([
                s.id.clone(),
                inspect::fmt_age(now.saturating_sub(s.arrival_ms)),
                s.attempts.to_string(),
                if held {
                    "held".to_string()
                } else if in_flight.contains(&s.id) {
                    "in flight".to_string()
                } else {
                    inspect::fmt_next(s.next_attempt_ms, now)
                },
                angle(&s.sender),
                s.recipients
                    .iter()
                    .map(|r| r.address.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                s.last_error().unwrap_or_else(|| "-".into()),
            ]),
            inspect::Entry::Corrupt { id, corrupt, .. } => Err((id.clone(), corrupt.clone())),
        })
        .collect();
    let mut width = HEAD.map(str::len);
    for r in &rows {
        match r {
            Ok(cols) => {
                for (w, c) in width.iter_mut().zip(cols) {
                    *w = (*w).max(c.chars().count());
                }
            }
            Err((id, _)) => width[0] = width[0].max(id.chars().count()),
        }
    }
    let line = |cols: [&str; 7]| {
        let mut out = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i == 6 {
                out.push_str(c);
            } else if i == 2 {
                out.push_str(&format!("{c:>w$}  ", w = width[i]));
            } else {
                out.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out
    };
    println!("{}", line(HEAD));
    let mut corrupt = 0;
    for r in &rows {
        match r {
            Ok(cols) => println!("{}", line(cols.each_ref().map(String::as_str))),
            Err((id, why)) => {
                corrupt += 1;
                println!("{id:<w$}  corrupt: {why}", w = width[0]);
            }
        }
    }
    let items = rows.len() - corrupt;
    let what = if held { "held item(s)" } else { "item(s)" };
    if corrupt > 0 {
        println!("-- {items} {what}, {corrupt} corrupt");
    } else {
        println!("-- {items} {what}");
    }
}

fn print_stat(s: &inspect::Stat) {
    let dom_w = s
        .domains
        .iter()
        .map(|r| r.domain.chars().count())
        .chain([6, s.total.domain.len()])
        .max()
        .unwrap_or(6);
    let t_w = s.total.total.to_string().len().max(1);
    let col_w: Vec<usize> = s
        .labels
        .iter()
        .enumerate()
        .map(|(i, l)| l.len().max(s.total.buckets[i].to_string().len()))
        .collect();
    let row = |name: &str, total: String, cells: Vec<String>| {
        let mut out = format!("{name:<dom_w$} {total:>t_w$}");
        for (c, w) in cells.iter().zip(&col_w) {
            out.push_str(&format!(" {c:>w$}"));
        }
        out
    };
    println!("queue {}", s.queue_dir);
    println!("{}", row("domain", "T".into(), s.labels.clone()));
    for r in std::iter::once(&s.total).chain(&s.domains) {
        println!(
            "{}",
            row(
                &r.domain,
                r.total.to_string(),
                r.buckets.iter().map(u64::to_string).collect()
            )
        );
    }
    println!(
        "{} item(s), {} recipient(s), {} byte(s); corrupt {}, held {}, quarantined {}",
        s.total.total, s.recipients, s.bytes, s.corrupt, s.held, s.quarantined
    );
}

fn print_inspection(i: &inspect::Inspection, now: u64) {
    let s = &i.summary;
    let t = &i.todo;
    println!("id:          {}", s.id);
    println!("file:        {}", i.path.display());
    println!("state:       {}", if s.held { "held" } else { "queued" });
    println!(
        "arrival:     {} ({} ago)",
        inspect::fmt_time(s.arrival_ms),
        inspect::fmt_age(now.saturating_sub(s.arrival_ms))
    );
    println!(
        "next:        {} ({})",
        inspect::fmt_time(s.next_attempt_ms),
        inspect::fmt_next(s.next_attempt_ms, now)
    );
    println!("attempts:    {}", s.attempts);
    println!("size:        {} bytes", s.size);
    println!("uuid:        {}", t.uuid);
    println!("queue_time:  {}", inspect::fmt_time(t.queue_time));
    println!("domain:      {}", t.domain);
    println!("force_tls:   {}", t.force_tls);
    println!("mail_from:   {}", t.mail_from.original);
    for (k, v) in &t.mail_from.extra {
        println!("  {k}: {v}");
    }
    for (k, v) in &t.extra {
        println!("{:<12} {v}", format!("{k}:"));
    }
    println!("rcpt_to:     {} recipient(s)", t.rcpt_to.len());
    for r in &t.rcpt_to {
        println!("  {}", r.original);
        for (k, v) in &r.extra {
            println!("    {k}: {v}");
        }
    }
    let notes = serde_json::to_string_pretty(&t.notes).unwrap_or_default();
    println!("notes:");
    for l in notes.lines() {
        println!("  {l}");
    }
    match &i.message {
        Some(m) => {
            println!("message:");
            print!("{}", String::from_utf8_lossy(m).replace("\r\n", "\n"));
        }
        None => {
            println!("headers:");
            for l in String::from_utf8_lossy(&i.headers).lines() {
                println!("  {l}");
            }
        }
    }
}
