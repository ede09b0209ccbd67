//! Parsed documents by their text. Producers send the same few documents with every
//! request, and copying a parsed document costs a fraction of parsing it again.

use std::num::NonZeroUsize;
use std::sync::{LazyLock, Mutex};

use async_graphql::parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition};
use async_graphql::{Request, ServerError};
use lru::LruCache;

use super::limits;

/// Documents kept.
const DOCUMENTS: usize = 256;
/// Longer documents are parsed every time (they are rarely sent twice).
const MAX_LEN: usize = 4096;

static CACHE: LazyLock<Mutex<LruCache<String, ExecutableDocument>>> = LazyLock::new(|| {
    let capacity = NonZeroUsize::new(DOCUMENTS).unwrap_or(NonZeroUsize::MIN);
    Mutex::new(LruCache::new(capacity))
});

/// `request`'s parsed document: from the cache, or parsed (and kept when it parses). A
/// document nested too deep is refused before parsing, which recurses.
pub fn parsed(request: &mut Request) -> Result<&ExecutableDocument, ServerError> {
    limits::check_text(&request.query)?;
    if request.query.len() <= MAX_LEN {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(document) = cache.get(request.query.as_str()) {
            request.set_parsed_query(document.clone());
        } else {
            drop(cache);
            let document = request.parsed_query()?.clone();
            let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
            cache.put(request.query.clone(), document);
        }
    }
    request.parsed_query()
}

/// The operation `request` would run; `None` when the document does not parse (the
/// executor reports that) or names no single operation.
pub fn operation(request: &mut Request) -> Option<&OperationDefinition> {
    let name = request.operation_name.clone();
    select(parsed(request).ok()?, name.as_deref())
}

/// The operation of `document` a request naming `name` runs, if there is one.
pub fn select<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a OperationDefinition> {
    let operation = match (&document.operations, name) {
        (DocumentOperations::Single(op), _) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    operation.map(|op| &op.node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_document_is_the_parsed_one() {
        let text = "mutation M($i: AuditEventInput!) { logAuditEvent(input: $i) { id } }";
        let expected = async_graphql::parser::parse_query(text).unwrap();
        for _ in 0..2 {
            let mut request = Request::new(text);
            let document = parsed(&mut request).unwrap();
            assert_eq!(format!("{document:?}"), format!("{expected:?}"));
        }
        assert!(CACHE.lock().unwrap().contains(text));
        let mut broken = Request::new("mutation {");
        assert!(parsed(&mut broken).is_err());
        assert!(!CACHE.lock().unwrap().contains("mutation {"));
    }
}
