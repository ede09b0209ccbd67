//! The action catalog: every action the kits' typed helpers record, written once as a
//! table. [`with_catalog!`] hands the table to a macro of the caller's (the Rust kit makes
//! its helpers from it); [`CATALOG`] and the [`actions`] constants come from it here, and
//! `contract.json` carries it to the Node kit.

/// One action of the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The helper family (`project`).
    pub family: &'static str,
    /// The helper method (`created`).
    pub helper: &'static str,
    /// The action recorded (`project.created`).
    pub action: &'static str,
    /// The target type recorded (`project`).
    pub target_type: &'static str,
    /// The outcome the helper records, when not success (`Failure`).
    pub outcome: Option<&'static str>,
    pub description: &'static str,
}

/// Calls `$then!` with the catalog: families of helpers, each
/// `family("target type") -> FamilyType { helper => CONST = "action" [Outcome], "meaning"; }`.
#[macro_export]
macro_rules! with_catalog {
    ($then:ident) => {
        $then! {
        /// Events about a project (target `project`).
        project("project") -> ProjectEvents {
            created => PROJECT_CREATED = "project.created", "A project was created.";
            updated => PROJECT_UPDATED = "project.updated", "A project's settings or name changed.";
            archived => PROJECT_ARCHIVED = "project.archived", "A project was archived.";
            deleted => PROJECT_DELETED = "project.deleted", "A project was deleted.";
        }
        /// Events about a member of a project or organization (target `user`).
        member("user") -> MemberEvents {
            added => MEMBER_ADDED = "member.added", "A user became a member.";
            removed => MEMBER_REMOVED = "member.removed", "A member was removed.";
            invited => MEMBER_INVITED = "member.invited", "A user was invited to become a member.";
        }
        /// Events about a role and its assignments (target `role`).
        role("role") -> RoleEvents {
            created => ROLE_CREATED = "role.created", "A role was defined.";
            updated => ROLE_UPDATED = "role.updated", "A role's permissions changed.";
            deleted => ROLE_DELETED = "role.deleted", "A role was deleted.";
            assigned => ROLE_ASSIGNED = "role.assigned", "A role was granted to someone.";
            revoked => ROLE_REVOKED = "role.revoked", "A role was taken from someone.";
        }
        /// Events about an API key (target `api_key`).
        api_key("api_key") -> ApiKeyEvents {
            created => API_KEY_CREATED = "api_key.created", "An API key was issued.";
            rotated => API_KEY_ROTATED = "api_key.rotated", "An API key's secret was replaced.";
            revoked => API_KEY_REVOKED = "api_key.revoked", "An API key was revoked.";
        }
        /// Events about a sign-in session (target `session`).
        session("session") -> SessionEvents {
            login => SESSION_LOGIN = "session.login", "A user signed in.";
            logout => SESSION_LOGOUT = "session.logout", "A user signed out.";
            login_failed => SESSION_LOGIN_FAILED = "session.login_failed" [Failure], "A sign-in attempt failed.";
            expired => SESSION_EXPIRED = "session.expired", "A session ended by timeout.";
        }
        /// Events about a settings scope (target `settings`).
        settings("settings") -> SettingsEvents {
            updated => SETTINGS_UPDATED = "settings.updated", "Settings changed.";
        }
        /// Events about an access or retention policy (target `policy`).
        policy("policy") -> PolicyEvents {
            created => POLICY_CREATED = "policy.created", "A policy was created.";
            updated => POLICY_UPDATED = "policy.updated", "A policy changed.";
            deleted => POLICY_DELETED = "policy.deleted", "A policy was deleted.";
        }
        }
    };
}

macro_rules! entries {
    ($(
        $(#[$family_doc:meta])*
        $family:ident($target:literal) -> $Family:ident {
            $( $helper:ident => $CONST:ident = $action:literal $([$outcome:ident])?, $description:literal; )+
        }
    )+) => {
        /// The action strings of the catalog.
        pub mod actions {
            $( $( #[doc = $description] pub const $CONST: &str = $action; )+ )+
        }

        /// Every action of the catalog, in order.
        pub const CATALOG: &[CatalogEntry] = &[
            $( $( CatalogEntry {
                family: stringify!($family),
                helper: stringify!($helper),
                action: $action,
                target_type: $target,
                outcome: entries!(@outcome $($outcome)?),
                description: $description,
            }, )+ )+
        ];
    };
    (@outcome) => { None };
    (@outcome $outcome:ident) => { Some(stringify!($outcome)) };
}

with_catalog!(entries);

/// The catalog as the Markdown table docs/integration.md holds (a test keeps them equal).
pub fn markdown_table() -> String {
    let mut table =
        String::from("| Helper | Action | Target type | Meaning |\n|---|---|---|---|\n");
    for entry in CATALOG {
        table.push_str(&format!(
            "| `{}(id).{}()` | `{}` | `{}` | {} |\n",
            entry.family, entry.helper, entry.action, entry.target_type, entry.description
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_is_valid_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for entry in CATALOG {
            assert!(
                crate::rules::is_valid_action(entry.action),
                "{}",
                entry.action
            );
            assert!(seen.insert(entry.action), "{} twice", entry.action);
        }
        assert_eq!(CATALOG.len(), 23);
        assert_eq!(actions::SESSION_LOGIN_FAILED, "session.login_failed");
    }

    #[test]
    fn docs_hold_the_catalog() {
        let docs = include_str!("../../docs/integration.md");
        assert!(
            docs.contains(&markdown_table()),
            "docs/integration.md's action table differs from the catalog; paste:\n{}",
            markdown_table()
        );
    }
}
