//! Throughput and latency of the running server against its floors, on SQLite and PostgreSQL.
//!
//!     cargo bench --bench throughput            # 10 s per workload
//!     BENCH_SECONDS=30 cargo bench --bench throughput
//!     BENCH_PIN=0 cargo bench --bench throughput   # nothing pinned: server and wrk share the cores
//!
//! Builds in release (cargo's bench profile), starts `tollgate serve` pinned to core 0, drives
//! it with wrk (installed from Debian's packages if missing) pinned to core 1, 32 connections,
//! and measures in the same run the floors each workload is compared with: `GET /healthz` (the
//! HTTP floor) and the raw guard floors, the writes of a guarded `createTask` through the same
//! driver without HTTP or GraphQL (one transaction per guard, and batched as the server
//! batches), and those of a `consumeCredits` with an API key (batched). Reports req/s, p50,
//! p99, errors, the server's CPU time and context switches per request (summed over
//! /proc/PID/task/*/ before and after each workload: unlike req/s they barely move when the
//! machine is busy) and its peak RSS, runs `tollgate verify` after each database, and writes
//! the table into BENCHMARKS.md between the throughput markers.
//!
//! BENCH_THREADS=1 prints, under each workload's line, the same CPU time (user and system)
//! and context switches (voluntary and involuntary) per request for each of the server's
//! threads.
//!
//! BENCH_SERVER_BIN=path/to/tollgate runs another build of the server (an older commit's, for a
//! before/after comparison in one sitting); the table is then only printed, not written.
//!
//! PostgreSQL is used when BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres)
//! answers; BENCH_DATABASE_URL=none skips it, as BENCH_SQLITE=none skips SQLite.
//!
//! BENCH_ONLY='a|b' runs only the workloads whose names contain one of the `|`-separated texts
//! (names hold commas; `/healthz` always runs); BENCH_ROUNDS=n runs them n times in turn, alternating, for an A/B
//! of two workloads in the same minutes. Either prints the table without writing it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gql;

use std::{
    fmt::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use entity::{api_key, plan, project, task, tenant, tenant_subscription, tenant_user, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Database as SeaDatabase, EntityTrait,
    QueryFilter,
};
use serde_json::json;
use tollgate::{
    config::{CREDITS_FEATURE, Config, CreditTypeConfig},
    credits::{Actor, IdempotencyKey, Paid, Spend, Statements, Writer},
    db::Database,
    projects::TASK,
};
use uuid::Uuid;

const CONNECTIONS: usize = 32;
const SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";
const CONFIG: &str = r#"
default_plan = "unlimited"
platform_admins = ["bench@example.com"]
[tenants]
max_per_user = 2000
[[plans]]
slug = "unlimited"
title = "Unlimited"
[[plans.features]]
name = "credits"
title = "Credits"
type = "UNLIMITED"
[[plans]]
slug = "limited"
title = "Limited"
[[plans.features]]
name = "credits"
title = "Credits"
type = "MONTHLY"
value = 1000
[[plans]]
slug = "watched"
title = "Watched"
[[plans.features]]
name = "credits"
title = "Credits"
type = "MONTHLY"
value = 1000000000
[[plans]]
slug = "granted"
title = "Granted"
[[plans.features]]
name = "credits"
title = "Credits"
type = "MONTHLY"
value = 0
"#;

/// Tenants of the multi-tenant workload, each with a project.
const TENANTS: usize = 1_000;

/// The floor a workload is compared with: its name and rate.
type Floor = Option<(&'static str, f64)>;

/// One measured row.
struct Row {
    database: &'static str,
    workload: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    denied: u64,
    floor: Floor,
    /// The server's CPU time and context switches per request (NaN for the raw floors).
    cost: Cost,
}

#[derive(Clone, Copy)]
struct Cost {
    cpu_us: f64,
    switches: f64,
    /// PostgreSQL's CPU time per request: all its processes (backends, WAL writer,
    /// checkpointer, …); NaN on SQLite, whose work is the server's own.
    database_cpu_us: f64,
}

const NO_COST: Cost = Cost {
    cpu_us: f64::NAN,
    switches: f64::NAN,
    database_cpu_us: f64::NAN,
};

/// CPU time (clock ticks) of every `postgres` process on the machine so far.
fn postgres_usage() -> u64 {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return 0;
    };
    processes
        .flatten()
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .map(|stat| stat_ticks(&stat))
        .sum()
}

/// The CPU time (clock ticks, user and system) a `/proc/…/stat` line reports.
fn stat_ticks(stat: &str) -> u64 {
    let (user, system) = stat_times(stat);
    user + system
}

/// The user and system CPU time (clock ticks) a `/proc/…/stat` line reports.
fn stat_times(stat: &str) -> (u64, u64) {
    // After the `(comm)` field: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    (field(14).unwrap_or(0), field(15).unwrap_or(0))
}

/// One thread's CPU time (clock ticks) and context switches so far.
#[derive(Default)]
struct ThreadUsage {
    name: String,
    user: u64,
    system: u64,
    voluntary: u64,
    involuntary: u64,
}

/// Every thread of a process, by thread id.
fn thread_usage(pid: u32) -> std::collections::BTreeMap<String, ThreadUsage> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    let switches = |status: &str, key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    tasks
        .flatten()
        .map(|task| {
            let dir = task.path();
            let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            let (user, system) = stat_times(&read("stat"));
            let status = read("status");
            let usage = ThreadUsage {
                name: read("comm").trim().to_owned(),
                user,
                system,
                voluntary: switches(&status, "voluntary_ctxt_switches:"),
                involuntary: switches(&status, "nonvoluntary_ctxt_switches:"),
            };
            (task.file_name().to_string_lossy().into_owned(), usage)
        })
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// The server's cost per request of `run` (which answers how many requests it made), and
/// PostgreSQL's when `postgres`; with BENCH_THREADS, the server's per thread, a line each
/// (empty otherwise).
fn measured(
    pid: u32,
    postgres: bool,
    run: impl FnOnce() -> WrkResult,
) -> (WrkResult, Cost, String) {
    let database = postgres.then(postgres_usage);
    let before = thread_usage(pid);
    let result = run();
    let after = thread_usage(pid);
    let database_after = postgres.then(postgres_usage);
    let n = result.requests.max(1.0);
    let per_request = |ticks: u64| ticks as f64 * 1e6 / clock_ticks() / n;
    // Each thread's use during the run (threads that ended meanwhile are not counted).
    let spent: Vec<ThreadUsage> = after
        .into_iter()
        .map(|(tid, a)| {
            let b = before.get(&tid);
            let since = |now: u64, then: fn(&ThreadUsage) -> u64| now - b.map_or(0, then);
            ThreadUsage {
                user: since(a.user, |t| t.user),
                system: since(a.system, |t| t.system),
                voluntary: since(a.voluntary, |t| t.voluntary),
                involuntary: since(a.involuntary, |t| t.involuntary),
                name: a.name,
            }
        })
        .collect();
    let mut threads = String::new();
    if std::env::var("BENCH_THREADS").is_ok() {
        for t in spent
            .iter()
            .filter(|t| t.user + t.system + t.voluntary + t.involuntary > 0)
        {
            let _ = writeln!(
                threads,
                "    {}: user {:.1} µs, system {:.1} µs, {:.3} voluntary and {:.3} involuntary context switches per request",
                t.name,
                per_request(t.user),
                per_request(t.system),
                t.voluntary as f64 / n,
                t.involuntary as f64 / n
            );
        }
    }
    let cost = Cost {
        cpu_us: per_request(spent.iter().map(|t| t.user + t.system).sum()),
        switches: spent
            .iter()
            .map(|t| t.voluntary + t.involuntary)
            .sum::<u64>() as f64
            / n,
        database_cpu_us: match (database, database_after) {
            (Some(before), Some(after)) => per_request(after.saturating_sub(before)),
            _ => f64::NAN,
        },
    };
    (result, cost, threads)
}

/// The server binary: this build's, or BENCH_SERVER_BIN.
fn server_bin() -> String {
    std::env::var("BENCH_SERVER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tollgate").to_owned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Re-entry: `throughput floor <url> <txn|batch|consume> <seconds>`, run pinned by the parent.
    if args.get(1).map(String::as_str) == Some("floor") {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let rps = rt.block_on(raw_floor(
            &args[2],
            &args[3],
            args[4].parse().expect("seconds"),
        ));
        println!("FLOOR {rps:.1}");
        return;
    }
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    ensure_wrk();
    let pinned = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let sqlite = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let sqlite_floor = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("floor.db").display()
    );
    let sqlite_floor_b = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("floor-b.db").display()
    );
    let sqlite_floor_c = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("floor-c.db").display()
    );
    if std::env::var("BENCH_SQLITE").as_deref() != Ok("none") {
        rt.block_on(run_database(
            "SQLite",
            &sqlite,
            [&sqlite_floor, &sqlite_floor_b, &sqlite_floor_c],
            dir.path(),
            seconds,
            pinned,
            &mut rows,
            &mut notes,
        ));
    }

    let pg = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    if pg != "none" {
        let dbs = rt.block_on(async {
            let mut made = Vec::new();
            for suffix in ["server", "floor", "floorb", "floorc"] {
                let name = format!("tollgate_throughput_{}_{suffix}", std::process::id());
                made.push(common::create_pg_database(&pg, &name).await?);
            }
            Some(made)
        });
        match dbs {
            Some(dbs) => {
                rt.block_on(run_database(
                    "PostgreSQL",
                    &dbs[0].0,
                    [&dbs[1].0, &dbs[2].0, &dbs[3].0],
                    dir.path(),
                    seconds,
                    pinned,
                    &mut rows,
                    &mut notes,
                ));
                rt.block_on(async {
                    for (_, dropper) in dbs {
                        dropper.drop_database().await;
                    }
                });
            }
            None => notes.push(format!("PostgreSQL at {pg} not reachable: skipped")),
        }
    }

    let table = render(&rows, seconds, pinned, &notes);
    println!("\n{table}");
    let partial = ["BENCH_ONLY", "BENCH_ROUNDS", "BENCH_SQLITE"]
        .iter()
        .any(|v| std::env::var(v).is_ok());
    match std::env::var("BENCH_SERVER_BIN") {
        Ok(bin) => eprintln!("server {bin}: table not written into BENCHMARKS.md"),
        Err(_) if partial => {
            eprintln!(
                "BENCH_ONLY, BENCH_ROUNDS or BENCH_SQLITE set: table not written into BENCHMARKS.md"
            )
        }
        Err(_) => write_into_benchmarks(&table),
    }
}

fn ensure_wrk() {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return;
    }
    eprintln!("wrk not found: installing Debian's package");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "wrk"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "could not install wrk (apt-get install wrk)");
}

#[allow(clippy::too_many_arguments)]
async fn run_database(
    label: &'static str,
    url: &str,
    floor_urls: [&String; 3],
    dir: &Path,
    seconds: u64,
    pinned: bool,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    eprintln!("== {label}");
    // The raw guard floors, pinned to the server's core, each on a database of its own.
    let floor_txn = run_floor(floor_urls[0], "txn", seconds, pinned);
    let floor_batch = run_floor(floor_urls[1], "batch", seconds, pinned);
    let floor_consume = run_floor(floor_urls[2], "consume", seconds, pinned);
    eprintln!(
        "raw guard floor: {floor_txn:.0}/s one transaction per guard, {floor_batch:.0}/s batched; \
         consumeCredits' writes {floor_consume:.0}/s batched"
    );

    let config_path = dir.join(format!("bench-{label}.toml"));
    std::fs::write(&config_path, CONFIG).expect("config");
    let port = free_port();
    let mut server = start_server(url, &config_path, port, pinned);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await;

    let token = gql(&client, &base, None, "mutation { signUp(input: {email: \"bench@example.com\", password: \"benchmark\", name: \"Bench\"}) { token } }", json!({})).await["data"]["signUp"]["token"].as_str().expect("token").to_owned();
    let unlimited = tenant_with_project(&client, &base, &token, "unlimited").await;
    // A server's key for the hot tenant (`consumeCredits`).
    let key = gql(
        &client,
        &base,
        Some(&token),
        &format!(
            "mutation {{ createApiKey(tenantId: \"{}\", name: \"bench\", scopes: [CREDITS_CONSUME]) {{ secret }} }}",
            unlimited.0
        ),
        json!({}),
    )
    .await;
    let key = key["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("API key")
        .to_owned();
    let limited = tenant_with_project(&client, &base, &token, "limited").await;
    move_to_plan(url, &limited.0, "limited").await;
    // A tenant on a plan with a limit it never nears: every spend checks the alert rules (the
    // 80 % and 100 % defaults) and crosses none.
    let watched = tenant_with_project(&client, &base, &token, "watched").await;
    move_to_plan(url, &watched.0, "watched").await;
    // A tenant whose plan gives nothing: every spend is paid from a grant (the guard's slow
    // path: counter and grant locked, the grant drawn down, an allocation recorded).
    let granted = tenant_with_project(&client, &base, &token, "granted").await;
    move_to_plan(url, &granted.0, "granted").await;
    let grant = gql(
        &client,
        &base,
        Some(&token),
        &format!(
            "mutation {{ grantCredits(input: {{tenantId: \"{}\", amount: 1000000000, idempotencyKey: \"bench\"}}) {{ grant {{ id }} }} }}",
            granted.0
        ),
        json!({}),
    )
    .await;
    assert!(grant["errors"].is_null(), "grantCredits: {grant}");
    let granted_key = gql(
        &client,
        &base,
        Some(&token),
        &format!(
            "mutation {{ createApiKey(tenantId: \"{}\", name: \"bench\", scopes: [CREDITS_CONSUME]) {{ secret }} }}",
            granted.0
        ),
        json!({}),
    )
    .await;
    let granted_key = granted_key["data"]["createApiKey"]["secret"]
        .as_str()
        .expect("API key")
        .to_owned();
    // The multi-tenant workload's tenants (on the default, UNLIMITED plan), made 32 at a time.
    let slugs: Vec<String> = (0..TENANTS).map(|i| format!("t{i}")).collect();
    let mut many = Vec::with_capacity(TENANTS);
    for chunk in slugs.chunks(32) {
        let made = futures::future::join_all(
            chunk
                .iter()
                .map(|slug| tenant_with_project(&client, &base, &token, slug)),
        )
        .await;
        many.extend(made.into_iter().map(|(_, project)| project));
    }
    let create_task = |project: &str| {
        format!(
            r#"{{"query":"mutation {{ createTask(projectId: \"{project}\", input: {{title: \"bench\"}}) {{ id }} }}"}}"#
        )
    };
    let spread: Vec<String> = many.iter().map(|p| create_task(p)).collect();

    let pid = server.id();
    let postgres = label == "PostgreSQL";
    let (health, cost, _) = measured(pid, postgres, || {
        wrk(&base, "GET", "/healthz", &[], None, seconds, pinned)
    });
    rows.push(Row {
        cost,
        database: label,
        workload: "`GET /healthz` (HTTP floor)".into(),
        rps: health.rps,
        p50_ms: health.p50_ms,
        p99_ms: health.p99_ms,
        errors: health.errors,
        denied: 0,
        floor: None,
    });
    let one = |body: String| vec![body];
    let user = Some(token.as_str());
    let consume = |tenant: &str| {
        format!(
            r#"{{"query":"mutation($i: ConsumeCreditsInput!) {{ consumeCredits(input: $i) {{ credit {{ id }} }} }}","variables":{{"i":{{"tenantId":"{tenant}","amount":1,"objectId":"job","idempotencyKey":"%KEY%"}}}}}}"#
        )
    };
    let keyed_task = |project: &str| {
        format!(
            r#"{{"query":"mutation($p: ID!, $k: String) {{ createTask(projectId: $p, input: {{title: \"bench\"}}, idempotencyKey: $k) {{ id }} }}","variables":{{"p":"{project}","k":"%KEY%"}}}}"#
        )
    };
    let workloads: [(&str, Vec<String>, Option<&str>, Floor); 10] = [
        (
            "`createTask`, UNLIMITED plan",
            one(create_task(&unlimited.1)),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`createTask`, MONTHLY 10⁹ plan: alert rules checked, none crossed",
            one(create_task(&watched.1)),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`createTask` with an idempotency key (a new one each, in variables), UNLIMITED plan",
            one(keyed_task(&unlimited.1)),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`consumeCredits` with an API key (a new idempotency key each), UNLIMITED plan",
            // As a backend sends it: one document, the input in variables; `%KEY%` becomes a
            // fresh idempotency key per request (wrk's `request`, below).
            one(consume(&unlimited.0)),
            Some(key.as_str()),
            Some(("healthz", health.rps)),
        ),
        (
            "`consumeCredits` with an API key, paid from a grant (plan allowance 0)",
            one(consume(&granted.0)),
            Some(granted_key.as_str()),
            Some(("healthz", health.rps)),
        ),
        (
            "`createTask`, 1,000 tenants (UNLIMITED), round-robin",
            spread,
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`createTask`, 1000-credit plan running out",
            one(create_task(&limited.1)),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`planFeatureUsage`",
            one(format!(
                r#"{{"query":"{{ planFeatureUsage(tenantId: \"{}\") {{ used remaining enabled }} }}"}}"#,
                unlimited.0
            )),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`creditHistory(first: 20)`",
            one(format!(
                r#"{{"query":"{{ creditHistory(tenantId: \"{}\", first: 20) {{ nodes {{ id type amount createdAt }} pageInfo {{ endCursor hasNextPage }} }} }}"}}"#,
                unlimited.0
            )),
            user,
            Some(("healthz", health.rps)),
        ),
        (
            "`creditTypes` (signed in)",
            one(r#"{"query":"{ creditTypes { value name amount } }"}"#.to_owned()),
            user,
            Some(("healthz", health.rps)),
        ),
    ];
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|s| s.split('|').map(str::to_owned).collect());
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let chosen: Vec<_> = workloads
        .into_iter()
        .filter(|(name, ..)| {
            only.as_ref()
                .is_none_or(|only| only.iter().any(|o| name.contains(o.as_str())))
        })
        .collect();
    for (name, bodies, bearer, floor) in (0..rounds).flat_map(|_| chosen.iter()) {
        let (name, bearer, floor) = (*name, *bearer, *floor);
        let (r, cost, threads) = measured(pid, postgres, || {
            wrk(&base, "POST", "/graphql", bodies, bearer, seconds, pinned)
        });
        eprintln!(
            "{name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors, {} denied, {:.0} µs CPU and {:.1} context switches per request, {:.0} µs PostgreSQL CPU",
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.denied,
            cost.cpu_us,
            cost.switches,
            cost.database_cpu_us
        );
        eprint!("{threads}");
        rows.push(Row {
            cost,
            database: label,
            workload: name.into(),
            rps: r.rps,
            p50_ms: r.p50_ms,
            p99_ms: r.p99_ms,
            errors: r.errors,
            denied: r.denied,
            floor,
        });
    }
    for (workload, rps) in [
        ("raw guard, one transaction per guard", floor_txn),
        ("raw guard, batched as the server batches", floor_batch),
        (
            "raw guard, `consumeCredits`' writes (an API key's, a new idempotency key each), batched",
            floor_consume,
        ),
    ] {
        rows.push(Row {
            database: label,
            workload: workload.into(),
            cost: NO_COST,
            rps,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            errors: 0,
            denied: 0,
            floor: None,
        });
    }

    if label == "PostgreSQL" {
        match fanout(
            url,
            &config_path,
            &base,
            &token,
            &unlimited.1,
            seconds,
            pinned,
        )
        .await
        {
            Ok(line) => notes.push(line),
            Err(why) => notes.push(format!("fan-out not measured: {why}")),
        }
    }

    let rss = peak_rss_mb(server.id());
    let _ = server.kill();
    let _ = server.wait();
    let verify = Command::new(server_bin())
        .arg("verify")
        .env("DATABASE_URL", url)
        .output()
        .expect("verify runs");
    let report = String::from_utf8_lossy(&verify.stdout)
        .trim()
        .replace('\n', "; ");
    notes.push(format!(
        "{label}: server peak RSS {rss:.1} MB; `tollgate verify` after the run: {} ({report})",
        if verify.status.success() {
            "clean"
        } else {
            "BROKEN"
        }
    ));
}

/// A spend on one replica reaching a subscriber on another, under load: a second server (B)
/// on the same database, a `graphql-ws` client (tests/browser/subscribe.mjs, node) subscribed
/// there to a probe tenant's `creditBalance`, wrk driving `createTask` on the hot tenant
/// through the first server (A) for `seconds`, and meanwhile a probe `createTask` for the probe
/// tenant through A every 20 ms. Each probe's latency is from A's response to the subscriber
/// printing a balance that includes it (a line read off node's stdout).
async fn fanout(
    url: &str,
    config: &Path,
    base: &str,
    token: &str,
    hot_project: &str,
    seconds: u64,
    pinned: bool,
) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt;
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !browser.join("node_modules/graphql-ws").exists() {
        return Err("tests/browser/node_modules missing (npm ci there)".into());
    }
    let port = free_port();
    let _b = Stopped(start_server(url, config, port, false));
    let b_base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &b_base).await;
    let (probe_tenant, probe_project) = tenant_with_project(&client, base, token, "probe").await;
    let mut node = tokio::process::Command::new("node")
        .arg(browser.join("subscribe.mjs"))
        .args([
            format!("ws://127.0.0.1:{port}/graphql/ws"),
            format!("Bearer {token}"),
            "subscription($t: ID!) { creditBalance(tenantId: $t) { used } }".to_owned(),
            json!({ "t": probe_tenant }).to_string(),
            "1000000".to_owned(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("node: {e}"))?;
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("stdout")).lines();
    // (used, when the subscriber printed it).
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(i64, Instant)>();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let at = Instant::now();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(used) = value["next"]["data"]["creditBalance"]["used"].as_i64() {
                let _ = seen_tx.send((used, at));
            }
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .map_err(|_| "no first value from the subscriber".to_owned())?
        .ok_or("the subscriber ended")?;
    let mut used = first.0;
    let load = {
        let (base, hot) = (base.to_owned(), hot_project.to_owned());
        let body = format!(
            r#"{{"query":"mutation {{ createTask(projectId: \"{hot}\", input: {{title: \"bench\"}}) {{ id }} }}"}}"#
        );
        let token = token.to_owned();
        tokio::task::spawn_blocking(move || {
            wrk(
                &base,
                "POST",
                "/graphql",
                &[body],
                Some(&token),
                seconds,
                pinned,
            )
        })
    };
    let probe = format!(
        "mutation {{ createTask(projectId: \"{probe_project}\", input: {{title: \"probe\"}}) {{ id }} }}"
    );
    let mut latencies = Vec::new();
    let mut missed = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        let answer = gql(&client, base, Some(token), &probe, json!({})).await;
        let answered = Instant::now();
        if !answer["errors"].is_null() {
            return Err(format!("probe refused: {answer}"));
        }
        used += 1;
        // The first value that includes this probe (values may be coalesced).
        let arrived = loop {
            match tokio::time::timeout(Duration::from_secs(5), seen.recv()).await {
                Ok(Some((value, at))) if value >= used => break Some(at),
                Ok(Some(_)) => continue,
                _ => break None,
            }
        };
        match arrived {
            Some(at) => latencies.push(at.saturating_duration_since(answered).as_secs_f64() * 1e3),
            None => missed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load = load.await.map_err(|e| format!("wrk: {e}"))?;
    let _ = node.kill().await;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(format!(
        "PostgreSQL fan-out, replica A → subscriber on replica B under `createTask` load on A \
         ({:.0} req/s): {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {missed} not seen within 5 s",
        load.rps,
        latencies.len(),
        at(0.5),
        at(0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    ))
}

/// A server process stopped when dropped (on every way out).
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

fn pin(core: &str, program: &str, pinned: bool) -> Command {
    if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", core, program]);
        c
    } else {
        Command::new(program)
    }
}

fn start_server(url: &str, config: &Path, port: u16, pinned: bool) -> Child {
    pin("0", &server_bin(), pinned)
        .args([
            "serve",
            "--config",
            config.to_str().expect("path"),
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .env("DATABASE_URL", url)
        .env("TOLLGATE_JWT_SECRET", SECRET)
        // One client at full speed is what is measured, not what a rate limit allows.
        .env("TOLLGATE_RATE_LIMIT__ENABLED", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts")
}

async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not become ready");
}

/// A tenant and a project in it: (tenant id, project id).
async fn tenant_with_project(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    slug: &str,
) -> (String, String) {
    let tenant = gql(
        client,
        base,
        Some(token),
        &format!(
            "mutation {{ createTenant(input: {{name: \"{slug}\", slug: \"{slug}\"}}) {{ id }} }}"
        ),
        json!({}),
    )
    .await;
    let tenant = tenant["data"]["createTenant"]["id"]
        .as_str()
        .expect("tenant")
        .to_owned();
    let project = gql(
        client,
        base,
        Some(token),
        &format!(
            "mutation {{ createProject(tenantId: \"{tenant}\", input: {{name: \"p\"}}) {{ id }} }}"
        ),
        json!({}),
    )
    .await;
    (
        tenant,
        project["data"]["createProject"]["id"]
            .as_str()
            .expect("project")
            .to_owned(),
    )
}

/// Puts a tenant on another plan (as a Stripe webhook later will).
async fn move_to_plan(url: &str, tenant: &str, slug: &str) {
    let db = SeaDatabase::connect(url).await.expect("db");
    let plan = plan::Entity::find()
        .filter(plan::Column::Slug.eq(slug))
        .one(&db)
        .await
        .expect("query")
        .expect("plan");
    let tenant = Uuid::parse_str(tenant).expect("uuid");
    let mut sub: tenant_subscription::ActiveModel = tenant_subscription::Entity::find_by_id(tenant)
        .one(&db)
        .await
        .expect("query")
        .expect("subscription")
        .into();
    sub.plan_id = Set(plan.id);
    sub.update(&db).await.expect("moved");
}

struct WrkResult {
    /// Requests completed.
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    denied: u64,
}

const LUA: &str = r#"
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) errors = 0; denied = 0 end
function response(status, headers, body)
  if status ~= 200 then errors = errors + 1
  elseif body:find('"errors"', 1, true) then
    if body:find('INSUFFICIENT_CREDITS', 1, true) then denied = denied + 1 else errors = errors + 1 end
  end
end
function done(summary, latency, requests)
  local e, d = 0, 0
  for _, t in ipairs(threads) do e = e + t:get("errors"); d = d + t:get("denied") end
  local s = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e + s.connect + s.read + s.write + s.timeout, d))
end
"#;

/// wrk on `path` for `seconds`: with no body, one body, or — several bodies — each request
/// the next body in turn.
fn wrk(
    base: &str,
    method: &str,
    path: &str,
    bodies: &[String],
    token: Option<&str>,
    seconds: u64,
    pinned: bool,
) -> WrkResult {
    let mut script = String::from(LUA);
    writeln!(script, "wrk.method = \"{method}\"").unwrap();
    if let Some(body) = bodies.first() {
        writeln!(script, "wrk.body = [==[{body}]==]").unwrap();
        script.push_str("wrk.headers[\"Content-Type\"] = \"application/json\"\n");
    }
    if bodies.len() == 1 && bodies[0].contains("%KEY%") {
        // A body made per request: `%KEY%` becomes a key no other request of the run has.
        script.push_str(
            "local n = 0
local tag = tostring(os.time()) .. tostring(math.random(1000000))
             function request() n = n + 1
               local body = wrk.body:gsub('%%KEY%%', tag .. '-' .. n)
               return wrk.format(nil, nil, nil, body) end
",
        );
    }
    if bodies.len() > 1 {
        script.push_str("local bodies = {\n");
        for body in bodies {
            writeln!(script, "[==[{body}]==],").unwrap();
        }
        // Formatted once per thread; `request` hands them out in turn.
        script.push_str(
            "}\nlocal formatted = {}\nlocal next_one = 0\n\
             function init(args) errors = 0; denied = 0\n\
               for i, b in ipairs(bodies) do formatted[i] = wrk.format(nil, nil, nil, b) end end\n\
             function request() next_one = next_one % #formatted + 1; return formatted[next_one] end\n",
        );
    }
    if let Some(token) = token {
        writeln!(
            script,
            "wrk.headers[\"Authorization\"] = \"Bearer {token}\""
        )
        .unwrap();
    }
    let file = tempfile::Builder::new()
        .suffix(".lua")
        .tempfile()
        .expect("script");
    std::fs::write(file.path(), script).expect("script written");
    let out = pin("1", "wrk", pinned)
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(file.path())
        .arg(format!("{base}{path}"))
        .output()
        .expect("wrk runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT"))
        .unwrap_or_else(|| panic!("wrk said: {stdout}"));
    let n: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().expect("number"))
        .collect();
    WrkResult {
        requests: n[0],
        rps: n[0] / (n[1] / 1e6),
        p50_ms: n[2] / 1e3,
        p99_ms: n[3] / 1e3,
        errors: n[4] as u64,
        denied: n[5] as u64,
    }
}

fn run_floor(url: &str, mode: &str, seconds: u64, pinned: bool) -> f64 {
    let me = std::env::current_exe().expect("self");
    let out = pin("0", me.to_str().expect("path"), pinned)
        .args(["floor", url, mode, &seconds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("floor runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("FLOOR "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("floor said: {stdout}"))
}

/// The writes of a guarded `createTask` on an UNLIMITED plan (`mode` `txn`: one transaction
/// per guard; `batch`: batched as the server batches), or those of a `consumeCredits` with an
/// API key (`consume`: an explicit amount, a new idempotency key each, batched), through the
/// server's own code and driver, `CONNECTIONS` callers at once, without HTTP or GraphQL.
async fn raw_floor(url: &str, mode: &str, seconds: u64) -> f64 {
    let mut config = Config::defaults().expect("built-in configuration");
    config.database_url = url.to_owned();
    common::on_unlimited_plan(&mut config);
    config.validate().expect("config");
    let db = Database::connect(&config).await.expect("db");
    tollgate::startup::migrate(&db).await.expect("migrate");
    tollgate::plans::sync_plans(&db, &config)
        .await
        .expect("plans");
    let now = Utc::now();
    let user = user::ActiveModel {
        id: Set(Uuid::now_v7()),
        email: Set("floor@example.com".into()),
        name: Set(None),
        password_hash: Set("x".into()),
        created_at: Set(now),
        external_subject: Set(None),
        email_verified_at: Set(None),
    }
    .insert(&db.write)
    .await
    .expect("user");
    let tenant = tenant::ActiveModel {
        id: Set(Uuid::now_v7()),
        slug: Set("floor".into()),
        name: Set("Floor".into()),
        stripe_customer_id: Set(None),
        created_at: Set(now),
        external_id: Set(None),
    }
    .insert(&db.write)
    .await
    .expect("tenant");
    // The guard checks that its spender is a member, as in the server.
    tenant_user::ActiveModel {
        tenant_id: Set(tenant.id),
        user_id: Set(user.id),
        role: Set(tenant_user::Role::Owner),
        created_at: Set(now),
    }
    .insert(&db.write)
    .await
    .expect("membership");
    tollgate::plans::subscribe(&db.write, tenant.id, "unlimited", now)
        .await
        .expect("subscribed");
    let project = project::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.id),
        name: Set("p".into()),
        description: Set(None),
        created_by: Set(user.id),
        created_at: Set(now),
        deleted_at: Set(None),
    }
    .insert(&db.write)
    .await
    .expect("project");
    // The key `consumeCredits` spends with: the guard checks that it is still in force.
    let api_key = api_key::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(Some(tenant.id)),
        name: Set("floor".into()),
        prefix: Set("tg_sk_floo".into()),
        secret_hash: Set("unused".into()),
        scopes: Set("CREDITS_CONSUME".into()),
        created_by: Set(Some(user.id)),
        created_at: Set(now),
        expires_at: Set(None),
        revoked_at: Set(None),
        last_used_at: Set(None),
    }
    .insert(&db.write)
    .await
    .expect("api key");
    let credit_type = match mode {
        "consume" => CreditTypeConfig::explicit(1, CREDITS_FEATURE.to_owned()),
        _ => config
            .credit_type(tollgate::projects::TASK.credit_type)
            .expect("the task credit type"),
    };
    let retention = tollgate::idempotency::retention(&config);
    let metrics = tollgate::metrics::Metrics::new().expect("metrics");
    // Unbatched: one transaction per guard.
    let max_batch = match mode {
        "txn" => 1,
        _ => config.database.max_batch,
    };
    let statements = Statements::build(db.backend(), &tollgate::projects::PAID);
    // As in the server: every charged spend is published to the live balance's fan-out.
    let changes = tollgate::live::Changes::start(&db, &config.database_url);
    let writer = Arc::new(
        Writer::spawn(db, statements, max_batch, metrics, changes)
            .await
            .expect("writer"),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CONNECTIONS {
        let writer = Arc::clone(&writer);
        let (credit_type, project) = (credit_type.clone(), project.clone());
        let (user_id, key_id, consume) = (user.id, api_key.id, mode == "consume");
        callers.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let spend = match consume {
                    true => consume_spend(project.tenant_id, key_id, &credit_type, retention),
                    false => task_spend(&project, user_id, &credit_type),
                };
                writer.submit(spend).await.expect("guard");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for c in callers {
        total += c.await.expect("caller");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// A guarded `createTask`'s spend, as the server makes it.
fn task_spend(project: &project::Model, user_id: Uuid, credit_type: &CreditTypeConfig) -> Spend {
    Spend {
        tenant_id: project.tenant_id,
        user_id: Some(user_id),
        credit_type: credit_type.clone(),
        paid: TASK
            .row(&task::Model {
                id: Uuid::now_v7(),
                tenant_id: project.tenant_id,
                project_id: project.id,
                title: "floor".into(),
                created_by: user_id,
                created_at: Utc::now(),
                deleted_at: None,
            })
            .expect("the task's row"),
        actor: Actor::User(user_id),
        subject: None,
        metadata: None,
        key: None,
        at: Utc::now(),
    }
}

/// The spend of the `consumeCredits` the benchmark sends (an explicit amount, `objectId`
/// "job", a new idempotency key), as the server makes it for an API key.
fn consume_spend(
    tenant_id: Uuid,
    key_id: Uuid,
    credit_type: &CreditTypeConfig,
    retention: chrono::Duration,
) -> Spend {
    let fingerprint =
        tollgate::consume::fingerprint(tenant_id, None, credit_type, Some("job"), None, "");
    Spend {
        tenant_id,
        user_id: None,
        credit_type: credit_type.clone(),
        paid: Paid::Action {
            object_id: Some("job".to_owned()),
        },
        actor: Actor::ApiKey(key_id),
        subject: None,
        metadata: None,
        key: Some(IdempotencyKey {
            value: Uuid::now_v7().to_string(),
            fingerprint,
            retention,
        }),
        at: Utc::now(),
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    // With taskset the child is taskset's exec'd program: same pid.
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn render(rows: &[Row], seconds: u64, pinned: bool, notes: &[String]) -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut t = String::new();
    writeln!(t, "Command: `cargo bench --bench throughput` ({seconds} s per workload, {CONNECTIONS} connections, wrk 1 thread).").unwrap();
    writeln!(
        t,
        "Machine: {cores} cores; {}.",
        if pinned {
            "server and raw floors pinned to core 0 with taskset, wrk to core 1"
        } else {
            "taskset unavailable: nothing pinned"
        }
    )
    .unwrap();
    writeln!(t, "Run: {}.\n", Utc::now().format("%Y-%m-%d %H:%M UTC")).unwrap();
    writeln!(
        t,
        "| database | workload | req/s | p50 ms | p99 ms | errors | denied | ratio to floor | server CPU µs/req | context switches/req | PostgreSQL CPU µs/req |"
    )
    .unwrap();
    writeln!(
        t,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"
    )
    .unwrap();
    for r in rows {
        let ms = |v: f64| {
            if v.is_nan() {
                "–".to_owned()
            } else {
                format!("{v:.2}")
            }
        };
        let ratio = r.floor.map_or("–".to_owned(), |(name, f)| {
            format!("{:.2}× {name}", r.rps / f)
        });
        let per = |v: f64, digits: usize| {
            if v.is_nan() {
                "–".to_owned()
            } else {
                format!("{v:.digits$}")
            }
        };
        writeln!(
            t,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.database,
            r.workload,
            r.rps,
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.errors,
            r.denied,
            ratio,
            per(r.cost.cpu_us, 0),
            per(r.cost.switches, 1),
            per(r.cost.database_cpu_us, 0)
        )
        .unwrap();
    }
    t.push('\n');
    for n in notes {
        writeln!(t, "- {n}").unwrap();
    }
    t
}

fn write_into_benchmarks(table: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/BENCHMARKS.md");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (begin, end) = ("<!-- throughput:begin -->", "<!-- throughput:end -->");
    let updated = match (text.find(begin), text.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{table}{}", &text[..b], &text[e..]),
        _ => format!("{text}\n{begin}\n{table}{end}\n"),
    };
    std::fs::write(path, updated).expect("BENCHMARKS.md written");
    eprintln!("table written into BENCHMARKS.md");
}
