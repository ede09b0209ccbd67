//! How many selections a document expands to with its fragments unrolled, counted once per
//! fragment, before async-graphql's own checks run: its recursion check and its validation
//! walk every fragment spread again, so what they do grows as the fan-out to the power of
//! the depth. A document past the bounds here is refused in time linear in its length.

use std::collections::HashMap;

use async_graphql::ServerError;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// Most selections (fields, fragment spreads, inline fragments, directives) a document
/// expands to with every fragment spread unrolled, over all its operations and fragments.
pub const MAX_SELECTIONS: usize = 10_000;
/// Deepest nesting of selection sets through fragments: async-graphql's own recursion limit.
pub const MAX_RECURSION: usize = 32;

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
}
