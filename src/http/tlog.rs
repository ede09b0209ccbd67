//! The C2SP `tlog-tiles` read API of each tenant's Merkle tree, under the same credentials
//! and scopes as the GraphQL reads, so that witnesses and transparency-log tools can follow
//! a tenant's log:
//! - `GET /tlog/<tenant>/checkpoint`: the latest signed checkpoint;
//! - `GET /tlog/<tenant>/tile/<L>/<N>[.p/<W>]`: hashes of tree level 8·L;
//! - `GET /tlog/<tenant>/tile/entries/<N>[.p/<W>]`: the leaves themselves (each event's
//!   32-byte chain hash, length-prefixed), while retention has not purged them.
//!
//! Only what the latest checkpoint covers is served.

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use sea_orm::DatabaseConnection;

use crate::credentials::Scope;
use crate::error::{Error, Result};
use crate::service::tlog::checkpoint;
use crate::service::tlog::tree::{TILE_WIDTH, Tree};

use super::caller::{admit, consistency};
use super::errors::{error_response, status_of};
use super::state::AppState;

pub(super) async fn checkpoint(
    State(state): State<AppState>,
    Path(tenant_id): Path<String>,
    request: Request,
) -> Response {
    respond(&state, request, &tenant_id, None).await
}

pub(super) async fn tile(
    State(state): State<AppState>,
    Path((tenant_id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    respond(&state, request, &tenant_id, Some(&path)).await
}

/// Authenticates, checks the tenant, then serves the checkpoint (`path` is `None`) or a tile.
async fn respond(
    state: &AppState,
    request: Request,
    tenant_id: &str,
    path: Option<&str>,
) -> Response {
    let (parts, _) = request.into_parts();
    let principal = match admit(state, &parts).await {
        Ok((principal, _)) => principal,
        Err(refused) => return refused,
    };
    let allowed = if principal.has(Scope::Read) {
        principal
            .tenants(Some(vec![tenant_id.to_owned()]))
            .map(drop)
    } else {
        Err(Error::Forbidden(
            "the tlog API needs the audit:read scope".to_owned(),
        ))
    };
    let served = match allowed {
        Ok(()) => {
            let db = state
                .context
                .reads
                .pick(consistency(&parts.headers).0.as_deref())
                .await;
            serve(state, &db, tenant_id, path).await
        }
        Err(err) => Err(err),
    };
    match served {
        Ok(response) => response,
        Err(Error::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(err) => error_response(status_of(&err), err),
    }
}

async fn serve(
    state: &AppState,
    db: &DatabaseConnection,
    tenant_id: &str,
    path: Option<&str>,
) -> Result<Response> {
    let latest = checkpoint::latest(db, tenant_id)
        .await?
        .ok_or(Error::NotFound)?;
    let Some(path) = path else {
        let headers = [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ];
        return Ok((headers, latest.signed_note).into_response());
    };
    let tile = TilePath::parse(path).ok_or(Error::NotFound)?;
    let size = latest.tree_size as u64;
    // Hashes (or leaves) at this level in the signed tree, and the end of the tile asked for.
    let available = size >> (8 * tile.level.unwrap_or(0));
    let end = tile
        .index
        .checked_mul(TILE_WIDTH)
        .and_then(|start| start.checked_add(tile.width));
    let end = end.filter(|end| *end <= available).ok_or(Error::NotFound)?;
    let mut tree = Tree::cached(db, tenant_id, &state.context.tiles);
    let body = match tile.level {
        Some(level) => tree
            .tile(level, tile.index, tile.width as usize)
            .await?
            .concat(),
        None => {
            let start = tile.index * TILE_WIDTH;
            let leaves = tree.leaf_data(start, end).await?.ok_or(Error::NotFound)?;
            leaves
                .iter()
                .flat_map(|leaf| [&(leaf.len() as u16).to_be_bytes()[..], leaf].concat())
                .collect()
        }
    };
    // A full tile never changes; a partial one is superseded as the log grows.
    let cache = if tile.width == TILE_WIDTH {
        "private, max-age=31536000, immutable"
    } else {
        "private, no-cache"
    };
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (header::CACHE_CONTROL, cache),
    ];
    Ok((headers, body).into_response())
}

/// A tile's path below `tile/`: `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`.
#[derive(Debug, PartialEq, Eq)]
struct TilePath {
    /// `None` for an entry bundle.
    level: Option<u32>,
    index: u64,
    width: u64,
}

impl TilePath {
    fn parse(path: &str) -> Option<Self> {
        let (first, rest) = path.split_once('/')?;
        let level = match first {
            "entries" => None,
            level => Some(decimal(level).filter(|l| *l <= 7)? as u32),
        };
        let (index, width) = match rest.split_once(".p/") {
            Some((index, width)) => (
                index,
                decimal(width).filter(|w| (1..TILE_WIDTH).contains(w))?,
            ),
            None => (rest, TILE_WIDTH),
        };
        // The index as 3-digit elements, all but the last prefixed with `x`: x001/x234/067,
        // without leading zero elements, so that each tile has one path.
        let elements: Vec<&str> = index.split('/').collect();
        let (last, leading) = elements.split_last()?;
        if leading.first() == Some(&"x000") {
            return None;
        }
        let mut n: u64 = 0;
        for element in leading {
            let group = three_digits(element.strip_prefix('x')?)?;
            n = n.checked_mul(1000)?.checked_add(group)?;
        }
        let index = n.checked_mul(1000)?.checked_add(three_digits(last)?)?;
        Some(TilePath {
            level,
            index,
            width,
        })
    }
}

/// A decimal number without leading zeros.
fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
    text.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| text.parse().ok())
        .flatten()
        .filter(|_| canonical)
}

fn three_digits(text: &str) -> Option<u64> {
    (text.len() == 3 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_parse_as_c2sp_writes_them() {
        let tile = |level, index, width| TilePath {
            level,
            index,
            width,
        };
        assert_eq!(TilePath::parse("0/000"), Some(tile(Some(0), 0, 256)));
        assert_eq!(
            TilePath::parse("1/x001/x234/067"),
            Some(tile(Some(1), 1_234_067, 256))
        );
        assert_eq!(TilePath::parse("2/005.p/17"), Some(tile(Some(2), 5, 17)));
        assert_eq!(
            TilePath::parse("entries/x001/000.p/1"),
            Some(tile(None, 1000, 1))
        );
        for bad in [
            "0/5",
            "0/0005",
            "00/000",
            "0/000.p/256",
            "0/000.p/0",
            "0/001/002",
            "8/000",
            "x/000",
            "0/000.p/01",
            "0/x000",
            "0/x000/001",
            "0/x018/x446/x744/x073/x709/x551/616",
        ] {
            assert_eq!(TilePath::parse(bad), None, "{bad}");
        }
    }
}
