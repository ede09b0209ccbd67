//! Limits on a document's shape that async-graphql's depth and complexity limits do not
//! cover: how deeply its text nests (checked before parsing, which recurses), how many
//! selections it expands to with its fragments unrolled (checked before async-graphql's own
//! checks, which unroll them without memoising), how many root fields (aliases included)
//! one operation selects, and how many entities it asks for (which `admission` prices).

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{
    BaseType, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{Request, ServerError, ServerResult, Variables};

/// Deepest nesting of `{`, `[` and `(` in a document's text.
pub const MAX_NESTING: usize = 64;
/// Most root fields (aliases included) in one operation.
pub const MAX_ROOT_FIELDS: usize = 100;
/// Most selections (fields, fragment spreads, inline fragments, directives) a document
/// expands to with every fragment spread unrolled, over all its operations and fragments.
pub const MAX_SELECTIONS: usize = 10_000;
/// Deepest nesting of selection sets through fragments: async-graphql's own recursion limit.
pub const MAX_RECURSION: usize = 32;

/// How deeply `{`, `[` and `(` nest in GraphQL text, read as async-graphql's grammar reads
/// it: brackets inside strings, block strings and comments do not count.
///
/// The count never falls short of what the parser would recurse through. Where the grammar
/// backtracks (an unterminated block string `"""` re-reads as the empty string `""`
/// followed by a string), so does this; where a token cannot parse (a string broken by a
/// line end), the parser stops there, and this counts on as if it were code.
pub fn nesting(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
                i += 1;
            }
            b'}' | b']' | b')' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'#' => {
                while i < bytes.len() && !matches!(bytes[i], b'\n' | b'\r') {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(br#"""""#) => {
                i = match block_string_end(bytes, i + 3) {
                    Some(end) => end,
                    // The grammar falls back to `""`, an empty string.
                    None => i + 2,
                };
            }
            b'"' => i = string_end(bytes, i + 1),
            _ => i += 1,
        }
    }
    deepest
}

/// Where a block string whose content starts at `i` ends (after its closing `"""`); `None`
/// when it is not closed. Only `\"""` escapes inside.
fn block_string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    while i < bytes.len() {
        if bytes[i..].starts_with(br#"\""""#) {
            i += 4;
        } else if bytes[i..].starts_with(br#"""""#) {
            return Some(i + 3);
        } else {
            i += 1;
        }
    }
    None
}

/// Where a string whose content starts at `i` ends: after its closing `"`, or at a line end
/// (where the parser gives up, and counting goes on as code).
fn string_end(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return i + 1,
            b'\n' | b'\r' => return i,
            // An escape's next character is never the end; a line end stays one.
            b'\\' if !matches!(bytes.get(i + 1), Some(b'\n' | b'\r')) => i += 2,
            _ => i += 1,
        }
    }
    i
}

/// Checks a document before async-graphql does anything with it (its text, then its
/// expansion), then its operations; refuses introspection,
/// when it is switched off, with an error rather than async-graphql's null.
pub struct DocumentLimits {
    pub introspection: bool,
}

impl ExtensionFactory for DocumentLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(DocumentLimits {
            introspection: self.introspection,
        })
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for DocumentLimits {
    /// The first thing a request meets, on every transport: async-graphql's own checks on
    /// a parsed document (its recursion depth, validation) unroll fragments without
    /// memoising them, so the document is measured here, before them. (The transports
    /// have usually parsed it already, through `documents::parsed`.)
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        if nesting(&request.query) > MAX_NESTING {
            return Err(too_deep());
        }
        expansion(request.parsed_query()?)?;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if nesting(query) > MAX_NESTING {
            return Err(too_deep());
        }
        let document = next.run(ctx, query, variables).await?;
        for (_, operation) in document.operations.iter() {
            // async-graphql's validation panics on a default value of an unknown type.
            for definition in &operation.node.variable_definitions {
                let mut ty = &definition.node.var_type.node.base;
                while let BaseType::List(inner) = ty {
                    ty = &inner.base;
                }
                if let BaseType::Named(name) = ty
                    && !ctx.schema_env.registry.types.contains_key(name.as_str())
                {
                    return Err(ServerError::new(
                        format!(
                            "variable ${} has an unknown type, {name}",
                            definition.node.name.node
                        ),
                        None,
                    ));
                }
            }
            let root = &operation.node.selection_set.node;
            if !self.introspection && introspects(root) {
                return Err(ServerError::new(
                    "introspection is switched off on this server",
                    None,
                ));
            }
            let fields = root_fields(&document, root, 0);
            if fields.len() > MAX_ROOT_FIELDS {
                return Err(ServerError::new(
                    format!(
                        "an operation may select at most {MAX_ROOT_FIELDS} root fields (aliases included); this one selects {}",
                        fields.len()
                    ),
                    None,
                ));
            }
            if operation.node.ty == OperationType::Subscription && fields.len() != 1 {
                return Err(ServerError::new(
                    "a subscription selects exactly one root field",
                    None,
                ));
            }
            // async-graphql runs only the root fields it finds directly in the selection:
            // one in a fragment would end the subscription at once, with nothing said.
            let direct = root
                .items
                .iter()
                .all(|s| matches!(s.node, Selection::Field(_)));
            if operation.node.ty == OperationType::Subscription && !direct {
                return Err(ServerError::new(
                    "a subscription selects its root field directly, not through a fragment",
                    None,
                ));
            }
        }
        Ok(document)
    }
}

/// How many entity representations the document's `_entities` fields ask for, all
/// operations and aliases together: each is resolved with its own selection, so the
/// document's complexity counts once per representation.
pub fn representations(document: &ExecutableDocument, variables: &Variables) -> usize {
    document
        .operations
        .iter()
        .flat_map(|(_, operation)| root_fields(document, &operation.node.selection_set.node, 0))
        .filter(|field| field.name.node == "_entities")
        .filter_map(|field| field.get_argument("representations"))
        .map(|value| {
            let resolved = value
                .node
                .clone()
                .into_const_with(|name| variables.get(&name).cloned().ok_or(()));
            match resolved {
                Ok(async_graphql::Value::List(items)) => items.len(),
                _ => 1,
            }
        })
        .sum()
}

/// What a selection set costs once its fragments are unrolled.
#[derive(Clone, Copy, Default)]
struct Measure {
    /// Selections, fragments unrolled.
    size: usize,
    /// Levels of selection sets below this one.
    height: usize,
}

/// Measures selection sets, each fragment once: async-graphql's recursion check and
/// validation walk every spread again, so what they do grows as the fan-out to the power of
/// the depth, while this grows with the document's length.
struct Expansion<'d> {
    document: &'d ExecutableDocument,
    /// `None` while a fragment is being measured (so that a cycle is seen).
    fragments: HashMap<&'d str, Option<Measure>>,
}

impl<'d> Expansion<'d> {
    /// `set`'s measure, `depth` levels below its root; recursion stops past `MAX_RECURSION`.
    fn set(&mut self, set: &'d SelectionSet, depth: usize) -> Result<Measure, ServerError> {
        if depth > MAX_RECURSION {
            return Err(too_nested());
        }
        let mut measure = Measure::default();
        for selection in &set.items {
            let (directives, below) = match &selection.node {
                Selection::Field(field) => {
                    let set = &field.node.selection_set.node;
                    let below = match set.items.is_empty() {
                        true => None,
                        false => Some(self.set(set, depth + 1)?),
                    };
                    (field.node.directives.len(), below)
                }
                Selection::InlineFragment(fragment) => (
                    fragment.node.directives.len(),
                    Some(self.set(&fragment.node.selection_set.node, depth + 1)?),
                ),
                Selection::FragmentSpread(spread) => (
                    spread.node.directives.len(),
                    self.fragment(&spread.node.fragment_name.node, depth + 1)?,
                ),
            };
            measure.size = measure.size.saturating_add(1 + directives);
            if let Some(below) = below {
                measure.size = measure.size.saturating_add(below.size);
                measure.height = measure.height.max(below.height + 1);
            }
        }
        Ok(measure)
    }

    /// The measure of fragment `name` spread `depth` levels down; `None` for an unknown
    /// fragment (validation reports it).
    fn fragment(&mut self, name: &'d str, depth: usize) -> Result<Option<Measure>, ServerError> {
        match self.fragments.get(name) {
            Some(Some(measure)) => {
                if depth + measure.height > MAX_RECURSION {
                    return Err(too_nested());
                }
                return Ok(Some(*measure));
            }
            Some(None) => {
                return Err(ServerError::new(
                    format!("fragment {name} spreads itself"),
                    None,
                ));
            }
            None => {}
        }
        let document = self.document;
        let Some(fragment) = document.fragments.get(name) else {
            return Ok(None);
        };
        self.fragments.insert(name, None);
        let measure = self.set(&fragment.node.selection_set.node, depth)?;
        self.fragments.insert(name, Some(measure));
        Ok(Some(measure))
    }
}

/// How many selections `document` expands to with its fragments unrolled (see
/// [`MAX_SELECTIONS`]), in time linear in its length; an error past the bound, for a
/// fragment that spreads itself, or for selections nested past [`MAX_RECURSION`].
pub fn expansion(document: &ExecutableDocument) -> Result<usize, ServerError> {
    let mut expansion = Expansion {
        document,
        fragments: HashMap::new(),
    };
    let mut total = 0usize;
    for (_, operation) in document.operations.iter() {
        let measure = expansion.set(&operation.node.selection_set.node, 0)?;
        total = total.saturating_add(measure.size);
    }
    for name in document.fragments.keys() {
        let measure = expansion.fragment(name, 0)?.unwrap_or_default();
        total = total.saturating_add(measure.size);
    }
    if total > MAX_SELECTIONS {
        return Err(ServerError::new(
            format!(
                "the document expands to {total} selections with its fragments unrolled; at most {MAX_SELECTIONS} are allowed"
            ),
            None,
        ));
    }
    Ok(total)
}

fn too_nested() -> ServerError {
    ServerError::new(
        format!("selections nest deeper than {MAX_RECURSION} levels, fragments included"),
        None,
    )
}

pub fn too_deep() -> ServerError {
    ServerError::new(
        format!("the document nests deeper than {MAX_NESTING} levels"),
        None,
    )
}

/// Whether a root selection asks for `__schema` or `__type`.
fn introspects(set: &SelectionSet) -> bool {
    set.items.iter().any(|selection| match &selection.node {
        Selection::Field(field) => matches!(field.node.name.node.as_str(), "__schema" | "__type"),
        Selection::InlineFragment(f) => introspects(&f.node.selection_set.node),
        Selection::FragmentSpread(_) => false,
    })
}

/// Fields selected at the root, through fragments (bounded, in case fragments cycle; the
/// validator reports cycles).
fn root_fields<'d>(
    document: &'d ExecutableDocument,
    set: &'d SelectionSet,
    level: usize,
) -> Vec<&'d Field> {
    if level > 8 {
        return Vec::new();
    }
    set.items
        .iter()
        .flat_map(|selection| match &selection.node {
            Selection::Field(field) => vec![&field.node],
            Selection::InlineFragment(f) => {
                root_fields(document, &f.node.selection_set.node, level + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or_else(Vec::new, |f| {
                    root_fields(document, &f.node.selection_set.node, level + 1)
                }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::parser::parse_query;

    /// A chain of fragments, each spreading the next `fan_out` times.
    fn fan_out(fan_out: usize, depth: usize) -> String {
        let mut text = "{ ...F0 }".to_owned();
        for level in 0..depth {
            let spreads = format!(" ...F{}", level + 1).repeat(fan_out);
            text += &format!(" fragment F{level} on Query {{ __typename{spreads} }}");
        }
        text + &format!(" fragment F{depth} on Query {{ __typename }}")
    }

    /// Selections counted by unrolling every spread, as async-graphql's checks walk them.
    fn unrolled(document: &ExecutableDocument, set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|selection| match &selection.node {
                Selection::Field(f) => {
                    1 + f.node.directives.len() + unrolled(document, &f.node.selection_set.node)
                }
                Selection::InlineFragment(f) => {
                    1 + f.node.directives.len() + unrolled(document, &f.node.selection_set.node)
                }
                Selection::FragmentSpread(s) => {
                    1 + s.node.directives.len()
                        + document
                            .fragments
                            .get(&s.node.fragment_name.node)
                            .map_or(0, |f| unrolled(document, &f.node.selection_set.node))
                }
            })
            .sum()
    }

    #[test]
    fn expansion_counts_what_unrolling_counts() {
        for (fan, depth) in [(1, 1), (2, 3), (3, 4), (2, 8)] {
            let document = parse_query(fan_out(fan, depth)).unwrap();
            let mut expected = 0;
            for (_, op) in document.operations.iter() {
                expected += unrolled(&document, &op.node.selection_set.node);
            }
            for fragment in document.fragments.values() {
                expected += unrolled(&document, &fragment.node.selection_set.node);
            }
            assert_eq!(expansion(&document).unwrap(), expected, "{fan}^{depth}");
        }
        let text = "query { a: auditLogs @skip(if: false) { nodes { id ... on AuditLog @include(if: true) { id } } } }";
        assert_eq!(expansion(&parse_query(text).unwrap()).unwrap(), 7);
    }

    #[test]
    fn a_fragment_bomb_is_refused_at_once() {
        // The document of the report: 995 bytes, 3^17 selections unrolled.
        let bomb = parse_query(fan_out(3, 17)).unwrap();
        let started = std::time::Instant::now();
        let refused = expansion(&bomb).unwrap_err();
        assert!(
            refused.message.contains("selections"),
            "{}",
            refused.message
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        let cycle =
            parse_query("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }");
        assert!(
            expansion(&cycle.unwrap())
                .unwrap_err()
                .message
                .contains("spreads itself")
        );
        let deep = parse_query(fan_out(1, 40)).unwrap();
        assert!(
            expansion(&deep)
                .unwrap_err()
                .message
                .contains("nest deeper")
        );
    }

    #[test]
    fn nesting_ignores_strings_and_comments() {
        assert_eq!(nesting("{ a { b(x: [1]) } }"), 4);
        assert_eq!(nesting(r#"{ a(s: "{{{{\"{{") } # {{{{{"#), 2);
        assert_eq!(nesting(&"{".repeat(100_000)), 100_000);
    }

    #[test]
    fn nesting_reads_block_strings_as_the_grammar_does() {
        let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        // The attack that got past the first version: a block string holding one `"`.
        let attack = format!(r#"{{ a(x: """a"b""", y: {deep}) }}"#);
        assert_eq!(nesting(&attack), 102);
        // `\"""` does not close a block string; brackets inside it do not count.
        assert_eq!(nesting(r#"{ a(x: """ \""" [[[[ """) }"#), 2);
        // Unterminated: the grammar re-reads `"""` as `""` and a string.
        assert_eq!(nesting(&format!(r#"{{ a(x: """{deep}"#)), 2);
        assert_eq!(nesting(&format!("{{ a(x: \"\"\"\n{deep}")), 102);
        // A string ends at a line end; an escaped quote does not end it.
        assert_eq!(nesting(&format!("{{ a(x: \"[[\n{deep}")), 102);
        assert_eq!(nesting(r#"{ a(x: "\"[[[") }"#), 2);
        assert_eq!(nesting(&format!("{{ a(x: \"\\\n{deep}")), 102);
        // Comments end at either line end.
        assert_eq!(nesting(&format!("# [[[\r{deep}")), 100);
    }
}
