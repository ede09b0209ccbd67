//! Limits on a document's shape that async-graphql's depth and complexity limits do not
//! cover: how deeply its text nests (checked before parsing, which recurses) and how many
//! root fields (aliases included) one operation selects.

use std::sync::Arc;

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery};
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{ServerError, ServerResult, Variables};

/// Deepest nesting of `{`, `[` and `(` in a document's text.
pub const MAX_NESTING: usize = 64;
/// Most root fields (aliases included) in one operation.
pub const MAX_ROOT_FIELDS: usize = 100;

/// How deeply brackets nest in GraphQL text, ignoring strings and comments.
pub fn nesting(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '[' | '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            '}' | ']' | ')' => depth = depth.saturating_sub(1),
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    deepest
}

/// Checks a document's text before it is parsed, then its operations after; refuses
/// introspection, when it is switched off, with an error rather than async-graphql's null.
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
            let root = &operation.node.selection_set.node;
            if !self.introspection && introspects(root) {
                return Err(ServerError::new(
                    "introspection is switched off on this server",
                    None,
                ));
            }
            let fields = root_fields(&document, root, 0);
            if fields > MAX_ROOT_FIELDS {
                return Err(ServerError::new(
                    format!(
                        "an operation may select at most {MAX_ROOT_FIELDS} root fields (aliases included); this one selects {fields}"
                    ),
                    None,
                ));
            }
        }
        Ok(document)
    }
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
fn root_fields(document: &ExecutableDocument, set: &SelectionSet, level: usize) -> usize {
    if level > 8 {
        return 0;
    }
    set.items
        .iter()
        .map(|selection| match &selection.node {
            Selection::Field(_) => 1,
            Selection::InlineFragment(f) => {
                root_fields(document, &f.node.selection_set.node, level + 1)
            }
            Selection::FragmentSpread(spread) => document
                .fragments
                .get(&spread.node.fragment_name.node)
                .map_or(0, |f| {
                    root_fields(document, &f.node.selection_set.node, level + 1)
                }),
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::nesting;

    #[test]
    fn nesting_ignores_strings_and_comments() {
        assert_eq!(nesting("{ a { b(x: [1]) } }"), 4);
        assert_eq!(nesting(r#"{ a(s: "{{{{\"{{") } # {{{{{"#), 2);
        assert_eq!(nesting(&"{".repeat(100_000)), 100_000);
    }
}
