//! Bundles the browser assets into the binary, so that the pages work on networks without
//! internet access:
//! - GraphiQL's, pinned by `ui/package-lock.json`, copied from `ui/node_modules/`;
//! - the audit log viewer's (`/console`), pinned by `console/package-lock.json` and built
//!   from `console/src/` by `npm run build --prefix console`.
//!
//! Without npm the crate still builds: the missing files are embedded empty, and the pages
//! say how to get them.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs, io};

/// Files in `ui/node_modules/`, copied under their own name to `OUT_DIR/graphiql/`, where
/// `src/graphiql.rs` embeds them.
const GRAPHIQL: [&str; 5] = [
    "react/umd/react.production.min.js",
    "react-dom/umd/react-dom.production.min.js",
    "graphiql/graphiql.min.js",
    "graphiql/graphiql.min.css",
    "graphql-ws/umd/graphql-ws.min.js",
];

/// The viewer's bundle, copied to `OUT_DIR/console/`, where `src/console.rs` embeds it.
const VIEWER: &str = "console/dist/audit-log-viewer.js";

fn main() -> io::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or(io::ErrorKind::NotFound)?);

    println!("cargo:rerun-if-changed=ui/package-lock.json");
    for source in GRAPHIQL {
        println!("cargo:rerun-if-changed=ui/node_modules/{source}");
    }
    let sources = GRAPHIQL.map(|source| Path::new("ui/node_modules").join(source));
    if sources.iter().any(|source| !source.is_file()) || lockfile_changed("ui") {
        warn_unless("GraphiQL", "`GET /`", npm(&["ci", "--prefix", "ui"]));
    }
    let version = embed(&sources, &out_dir.join("graphiql"))?;
    println!("cargo:rustc-env=GRAPHIQL_ASSETS_VERSION={version:016x}");

    for watched in [
        "console/package-lock.json",
        "console/build.mjs",
        "console/src",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let viewer = Path::new(VIEWER);
    if lockfile_changed("console") {
        warn_unless(
            "viewer",
            "`GET /console`",
            npm(&["ci", "--prefix", "console"]),
        );
    }
    if modified(viewer)
        < newest(Path::new("console/src")).max(modified(Path::new("console/build.mjs")))
    {
        warn_unless(
            "viewer",
            "`GET /console`",
            npm(&["run", "build", "--prefix", "console"]),
        );
    }
    let version = embed(&[viewer.to_owned()], &out_dir.join("console"))?;
    println!("cargo:rustc-env=CONSOLE_ASSETS_VERSION={version:016x}");
    Ok(())
}

/// Copies `sources` under their own names into `dir`; returns a hash of their contents,
/// which versions the asset URLs: browsers may cache them forever, yet get new ones after
/// an upgrade.
fn embed(sources: &[PathBuf], dir: &Path) -> io::Result<u64> {
    fs::create_dir_all(dir)?;
    let mut hasher = DefaultHasher::new();
    for source in sources {
        // An empty placeholder keeps the crate compiling; the page notices the missing script.
        let bytes = fs::read(source).unwrap_or_default();
        hasher.write(&bytes);
        fs::write(dir.join(source.file_name().unwrap_or_default()), bytes)?;
    }
    Ok(hasher.finish())
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<std::time::SystemTime> {
    let entries = fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                newest(&path)
            } else {
                modified(&path)
            }
        })
        .max()
}

/// True when `package`'s lockfile changed after its last install, which npm records in
/// `node_modules/.package-lock.json` (`None`, no install, compares as older than any file).
fn lockfile_changed(package: &str) -> bool {
    let package = Path::new(package);
    modified(&package.join("package-lock.json"))
        > modified(&package.join("node_modules/.package-lock.json"))
}

fn warn_unless(what: &str, page: &str, result: Result<(), String>) {
    if let Err(why) = result {
        println!(
            "cargo:warning=The {what} assets could not be built ({why}); {page} will only show \
             an explanation. Install Node.js/npm, then rebuild."
        );
    }
}

fn npm(args: &[&str]) -> Result<(), String> {
    let output = Command::new("npm")
        .args(args)
        .args(["--no-audit", "--no-fund"])
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    // npm's first lines name the error; a warning has room for only a few.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stderr
        .lines()
        .map(|line| line.trim_start_matches("npm error").trim())
        .filter(|line| !line.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("; ");
    let status = output.status;
    Err(format!(
        "`npm {}` failed ({status}): {summary}",
        args.join(" ")
    ))
}
