//! Bundles the GraphiQL browser assets (pinned by `ui/package-lock.json`) into the binary,
//! so the IDE works on networks without internet access.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs, io};

/// Files in `ui/node_modules/`, copied under their own name to `OUT_DIR/graphiql/`, where
/// `src/graphiql.rs` embeds them.
const ASSETS: [&str; 5] = [
    "react/umd/react.production.min.js",
    "react-dom/umd/react-dom.production.min.js",
    "graphiql/graphiql.min.js",
    "graphiql/graphiql.min.css",
    "graphql-ws/umd/graphql-ws.min.js",
];

const NODE_MODULES: &str = "ui/node_modules";
const LOCKFILE: &str = "ui/package-lock.json";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={LOCKFILE}");
    for source in ASSETS {
        println!("cargo:rerun-if-changed={NODE_MODULES}/{source}");
    }

    if needs_install()
        && let Err(why) = npm_ci()
    {
        println!(
            "cargo:warning=GraphiQL assets could not be installed ({why}); `GET /` will only show \
             an explanation. Install Node.js/npm and run `npm ci --prefix ui`, then rebuild."
        );
    }

    let out_dir =
        PathBuf::from(env::var_os("OUT_DIR").ok_or(io::ErrorKind::NotFound)?).join("graphiql");
    fs::create_dir_all(&out_dir)?;
    // Versions the asset URLs: browsers may cache them forever, yet get new ones after an upgrade.
    let mut hasher = DefaultHasher::new();
    for source in ASSETS {
        let source = Path::new(NODE_MODULES).join(source);
        // An empty placeholder keeps the crate compiling; the page notices the missing scripts.
        let bytes = fs::read(&source).unwrap_or_default();
        hasher.write(&bytes);
        fs::write(out_dir.join(source.file_name().unwrap_or_default()), bytes)?;
    }
    let version = hasher.finish();
    println!("cargo:rustc-env=GRAPHIQL_ASSETS_VERSION={version:016x}");
    Ok(())
}

/// True when an asset is missing, or the lockfile changed after the last install (which npm
/// records in `node_modules/.package-lock.json`).
fn needs_install() -> bool {
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let modules = Path::new(NODE_MODULES);
    let missing = ASSETS.iter().any(|source| !modules.join(source).is_file());
    // `None` (no install record) compares as older than any lockfile.
    missing || modified(Path::new(LOCKFILE)) > modified(&modules.join(".package-lock.json"))
}

fn npm_ci() -> Result<(), String> {
    let output = Command::new("npm")
        .args(["ci", "--prefix", "ui", "--no-audit", "--no-fund"])
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
    Err(format!("`npm ci` failed ({status}): {summary}"))
}
