//! Limits on a document's shape that async-graphql's depth and complexity limits do not
//! cover: how deeply its text nests (checked before parsing, which recurses), how many
//! selections it expands to (`expansion`, checked before async-graphql's own checks), how
//! many root fields (aliases included) one operation selects, and how many entities it asks
//! for (which `capacity` prices).

use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextPrepareRequest,
};
use async_graphql::parser::types::{
    BaseType, ExecutableDocument, Field, OperationType, Selection, SelectionSet,
};
use async_graphql::{Request, ServerError, ServerResult, Variables};

use super::expansion;

/// Deepest nesting of `{`, `[` and `(` in a document's text.
pub const MAX_NESTING: usize = 64;
/// Most root fields (aliases included) in one operation.
pub const MAX_ROOT_FIELDS: usize = 100;

/// Most selections a document's text may hold: each field (not its alias), fragment spread,
/// inline fragment and directive, inside `{}` and outside arguments. Expanded, a document
/// holds at least as many, so a text past this is past `expansion::MAX_SELECTIONS` too, and
/// is refused before it is parsed.
pub const MAX_SELECTION_NAMES: usize = super::expansion::MAX_SELECTIONS;

/// What a document's text shows before it is parsed, in one linear pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Text {
    /// How deeply `{`, `[` and `(` nest.
    pub nesting: usize,
    /// Selections written out (see [`MAX_SELECTION_NAMES`]).
    pub selection_names: usize,
}

/// Refuses a document whose text nests too deep (parsing recurses) or names too many
/// selections (parsing a megabyte takes a hundred milliseconds), before it is parsed.
pub fn check_text(text: &str) -> Result<(), ServerError> {
    let seen = scan(text);
    if seen.nesting > MAX_NESTING {
        return Err(too_deep());
    }
    if seen.selection_names > MAX_SELECTION_NAMES {
        return Err(ServerError::new(
            format!(
                "the document holds {} selections; at most {} are allowed",
                seen.selection_names,
                super::expansion::MAX_SELECTIONS
            ),
            None,
        ));
    }
    Ok(())
}

/// How deeply `{`, `[` and `(` nest in GraphQL text (see [`scan`]).
pub fn nesting(text: &str) -> usize {
    scan(text).nesting
}

/// Reads GraphQL text as async-graphql's grammar reads it: brackets and names inside
/// strings, block strings and comments do not count.
///
/// The nesting never falls short of what the parser would recurse through. Where the
/// grammar backtracks (an unterminated block string `"""` re-reads as the empty string `""`
/// followed by a string), so does this; where a token cannot parse (a string broken by a
/// line end), the parser stops there, and this counts on as if it were code.
pub fn scan(text: &str) -> Text {
    let bytes = text.as_bytes();
    let (mut depth, mut braces, mut parens, mut i) = (0usize, 0usize, 0usize, 0usize);
    let mut seen = Text::default();
    while i < bytes.len() {
        match bytes[i] {
            open @ (b'{' | b'[' | b'(') => {
                depth += 1;
                seen.nesting = seen.nesting.max(depth);
                braces += usize::from(open == b'{');
                parens += usize::from(open == b'(');
                i += 1;
            }
            close @ (b'}' | b']' | b')') => {
                depth = depth.saturating_sub(1);
                if close == b'}' {
                    braces = braces.saturating_sub(1);
                } else if close == b')' {
                    parens = parens.saturating_sub(1);
                }
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
            b'.' if bytes[i..].starts_with(b"...") => {
                // A spread or an inline fragment: one selection, whatever names follow
                // (`...F`, `... on T`).
                seen.selection_names += usize::from(braces > 0 && parens == 0);
                i = skip_ignored(bytes, i + 3);
                let (name, end) = name_at(bytes, i);
                i = match name {
                    b"on" => name_at(bytes, skip_ignored(bytes, end)).1,
                    _ => end,
                };
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => {
                let (_, end) = name_at(bytes, i);
                // A name followed by `:` is an alias: its field is the selection.
                let alias = bytes.get(skip_ignored(bytes, end)) == Some(&b':');
                seen.selection_names += usize::from(braces > 0 && parens == 0 && !alias);
                i = end;
            }
            _ => i += 1,
        }
    }
    seen
}

/// The name starting at `i` (empty if none), and where it ends.
fn name_at(bytes: &[u8], i: usize) -> (&[u8], usize) {
    let mut end = i;
    while end < bytes.len() && matches!(bytes[end], b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9')
    {
        end += 1;
    }
    (&bytes[i..end], end)
}

/// Where the next token after `i` starts: past white space and commas.
fn skip_ignored(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b'\n' | b'\r' | b',') {
        i += 1;
    }
    i
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
        check_text(&request.query)?;
        expansion::expansion(request.parsed_query()?)?;
        next.run(ctx, request).await
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        check_text(query)?;
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
    use super::{check_text, expansion, nesting, scan};

    #[test]
    fn selection_names_are_counted_outside_arguments() {
        let text = r#"query Q($v: Int = 3) { a: f(x: {y: [z]}, s: "w w") @d(if: true) { ...F ... on T { g } } } fragment F on T { h }"#;
        // f d ...F (... on T) g (in braces, outside parentheses), then h.
        assert_eq!(scan(text).selection_names, 6);
        let expanded = expansion::expansion(&async_graphql::parser::parse_query(text).unwrap());
        assert!(expanded.unwrap() >= 6);
        let flat = format!("{{ {} }}", "a: __typename ".repeat(20_000));
        assert!(check_text(&flat).is_err());
        let inline = format!(
            "mutation {{ m(x: [{}]) {{ id }} }}",
            "{a: 1, b: \"c\"}, ".repeat(20_000)
        );
        assert!(check_text(&inline).is_ok(), "arguments are not selections");
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
